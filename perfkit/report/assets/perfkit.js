// perfkit reports: interactive charts, sortable and filterable tables, the compare-command picker.
// One external script (no inline script anywhere): pages pass a strict content-security policy.
"use strict";
(function () {
  function charts() {
    document.querySelectorAll(".plotly-chart").forEach(function (el) {
      var src = document.getElementById(el.id + "-data");
      if (!src || !window.Plotly) { return; }
      var fig = JSON.parse(src.textContent);
      window.Plotly.newPlot(el, fig.data, fig.layout, {responsive: true, displaylogo: false});
    });
  }
  function cellValue(td) {
    var t = (td.getAttribute("data-sort") || td.textContent || "").trim();
    var m = t.replace(/,/g, "").match(/^[+-]?\d+(\.\d+)?/);
    return m ? parseFloat(m[0]) : t.toLowerCase();
  }
  function sortable() {
    document.querySelectorAll("table.sortable").forEach(function (table) {
      var heads = table.querySelectorAll("thead th");
      heads.forEach(function (th, i) {
        th.setAttribute("tabindex", "0");
        th.addEventListener("click", function () {
          var asc = th.getAttribute("aria-sort") !== "ascending";
          heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
          th.setAttribute("aria-sort", asc ? "ascending" : "descending");
          var body = table.tBodies[0];
          var rows = Array.prototype.slice.call(body.rows);
          rows.sort(function (a, b) {
            var x = cellValue(a.cells[i] || a.cells[0]), y = cellValue(b.cells[i] || b.cells[0]);
            if (typeof x === typeof y) { return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); }
            return (typeof x === "number" ? -1 : 1) * (asc ? 1 : -1);
          });
          rows.forEach(function (r) { body.appendChild(r); });
        });
      });
    });
  }
  function filters() {
    document.querySelectorAll("input.table-filter").forEach(function (input) {
      var table = document.getElementById(input.getAttribute("data-table"));
      if (!table) { return; }
      input.addEventListener("input", function () {
        var q = input.value.toLowerCase();
        Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
          r.hidden = q !== "" && r.textContent.toLowerCase().indexOf(q) < 0;
        });
      });
    });
  }
  function comparePicker() {
    var a = document.getElementById("cmp-a"), b = document.getElementById("cmp-b"), c = document.getElementById("cmp-cmd");
    if (!a || !b || !c) { return; }
    a.selectedIndex = Math.min(1, a.options.length - 1); b.selectedIndex = 0;
    function update() { c.textContent = "perfkit compare " + a.value + " " + b.value; }
    a.addEventListener("change", update); b.addEventListener("change", update); update();
  }
  document.addEventListener("DOMContentLoaded", function () { charts(); sortable(); filters(); comparePicker(); });
})();
