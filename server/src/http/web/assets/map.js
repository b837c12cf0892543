// Clicking a point on the sightings map shows it beside the map (without JavaScript
// the point links to its row in the table instead).
(function () {
  var map = document.getElementById("map");
  var detail = document.getElementById("detail");
  if (!map || !detail) return;
  map.addEventListener("click", function (e) {
    var c = e.target.closest("circle");
    if (!c) return;
    e.preventDefault();
    var chosen = map.querySelector("circle.chosen");
    if (chosen) chosen.classList.remove("chosen");
    c.classList.add("chosen");
    detail.textContent = "";
    c.getAttribute("data-info").split(" · ").forEach(function (part) {
      var line = document.createElement("div");
      line.textContent = part;
      detail.appendChild(line);
    });
  });
})();
