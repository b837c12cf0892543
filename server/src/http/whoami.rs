//! `GET /api/v1/whoami`: a device checks its token without sending a batch (the field
//! client's connection test).

use axum::Json;
use ctdata_api::WhoAmI;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::DeviceAuth;
use super::{AppState, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(whoami))
}

/// Which device this token logs in as; 401 for an unknown token, 403 when revoked.
#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "devices",
    responses(
        (status = 200, description = "The token is valid", body = WhoAmI),
        (status = 401, description = "No or wrong device token", body = ErrorBody),
        (status = 403, description = "The device is revoked", body = ErrorBody),
    ),
    security(("device_token" = []), ("device_basic" = []))
)]
async fn whoami(DeviceAuth(device): DeviceAuth) -> Json<WhoAmI> {
    Json(WhoAmI { device })
}
