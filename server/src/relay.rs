//! Send on sync: a station PC may be allowed to deliver batches that handhelds
//! recorded, under the handheld's own name (`device add NAME --relay-for LIST`).

use ctdata_batch::DeviceName;

/// Checks and normalises a `--relay-for` value: `*`, or device names separated by
/// commas (lowercase, sorted, no repeats).
pub fn parse_rule(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    if text == "*" {
        return Ok("*".into());
    }
    let mut names = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if let Err(e) = name.parse::<DeviceName>() {
            anyhow::bail!("--relay-for: {name:?}: {e}");
        }
        names.push(name.to_lowercase());
    }
    if names.is_empty() {
        anyhow::bail!("--relay-for: give device names separated by commas, or '*' for any");
    }
    names.sort();
    names.dedup();
    Ok(names.join(","))
}

/// Whether `rule` lets its device relay for `device`.
pub fn covers(rule: &str, device: &str) -> bool {
    rule == "*" || rule.split(',').any(|n| n.eq_ignore_ascii_case(device))
}

/// The HTTP request header that names the device a file was recorded by when the file
/// itself names none (a handheld's CSV or GeoJSON docked at a station PC).
pub const HEADER: &str = "x-ctdata-relay-for";

/// The folder, inside a station's own folder of the drop directory (over FTP: its
/// root), that relayed files go to: `relay/<device>/<file>` is `<device>`'s file,
/// delivered by the station.
pub const FOLDER: &str = "relay";

/// Why `sender` may not deliver a file recorded by `device`; `rule` is its relay right.
pub fn refusal(sender: &str, rule: Option<&str>, device: &str) -> String {
    match rule {
        Some(rule) => format!(
            "device {sender} may relay only for {rule}, and this batch was recorded by \
             {device}: the administrator can allow it with `ctdata-server device relay \
             {sender} --for {rule},{device}`"
        ),
        None => format!(
            "device {sender} may not relay for other devices, and this batch was recorded \
             by {device}: the administrator can allow it with `ctdata-server device relay \
             {sender} --for {device}`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_devices_or_all() {
        assert_eq!(
            parse_rule(" Ranger-10, ranger-09,ranger-09").unwrap(),
            "ranger-09,ranger-10"
        );
        assert!(covers("ranger-09,ranger-10", "RANGER-09"));
        assert!(!covers("ranger-09,ranger-10", "ranger-11"));
        assert!(covers("*", "anyone"));
        assert!(parse_rule("bad name!").is_err());
        assert!(parse_rule(" , ").is_err());
    }
}
