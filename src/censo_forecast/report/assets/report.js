/* censo-forecast report: the search tables, the state map and the stage pickers.
   Plain JavaScript, no library, no request: every number comes from the JSON blocks in this page. */
(function () {
  "use strict";
  var settings = JSON.parse(document.getElementById("report-settings").textContent);
  var texts = settings.texts;
  var PAGE = 100;

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (_, key) { return values[key]; });
  }
  function integer(value) {
    if (value === null || value === undefined) { return "–"; }
    var digits = String(Math.abs(value)).replace(/\B(?=(\d{3})+(?!\d))/g, settings.group);
    return (value < 0 ? "-" : "") + digits;
  }
  function tenths(value) {
    if (value === null || value === undefined) { return "–"; }
    var sign = value > 0 ? "+" : (value < 0 ? "-" : "");
    var size = Math.abs(value);
    return sign + Math.floor(size / 10) + settings.decimal + (size % 10) + " %";
  }
  function fold(text) {
    return String(text).normalize("NFD").replace(/[\u0300-\u036f]/g, "").toLowerCase();
  }
  function csvCell(value) {
    if (value === null || value === undefined) { return ""; }
    var text = String(value);
    return /[",\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }
  function colour(fraction, largest) {
    if (fraction === null || fraction === undefined) { return "#eceef2"; }
    var share = Math.min(Math.abs(fraction) / largest, 1);
    var base = fraction >= 0 ? [31, 78, 140] : [178, 34, 34];
    var mixed = base.map(function (c) { return Math.round(255 + (c - 255) * (0.15 + 0.85 * share)); });
    return "rgb(" + mixed.join(",") + ")";
  }

  /* A searchable, sortable table of municipalities or schools over stages and forecast years. */
  function Finder(root) {
    var data = JSON.parse(root.querySelector(".finder-data").textContent);
    var years = data.years, stages = data.stages, places = data.places, munis = data.municipalities || null;
    var schools = data.kind === "escolas";
    var query = root.querySelector("input.q"), ufPick = root.querySelector("select.uf");
    var stagePick = root.querySelector("select.stage"), body = root.querySelector("tbody");
    var count = root.querySelector(".count"), more = root.querySelector("button.more");
    var haystack = places.map(function (p) {
      var muni = schools ? munis[p[2]] || ["", "", ""] : null;
      return fold(schools ? [p[0], p[1], muni[1], muni[2]].join(" ") : p.join(" "));
    });
    function uf(row) { var p = places[row[0]]; return schools ? (munis[p[2]] || ["", "", ""])[2] : p[2]; }
    function muniName(row) { var p = places[row[0]]; return schools ? (munis[p[2]] || ["", ""])[1] : p[1]; }
    var keys = {
      code: function (r) { return places[r[0]][0]; },
      name: function (r) { return fold(places[r[0]][1]); },
      muni: function (r) { return fold(muniName(r)); },
      uf: uf,
      stage: function (r) { return r[1]; },
      last: function (r) { return r[2]; },
      change: function (r) { return r[r.length - 1]; }
    };
    years.forEach(function (year, i) { keys["y" + year] = function (r) { return r[3 + 3 * i]; }; });
    var order = {key: null, sign: 1}, shown = PAGE, matches = [];
    var textColumns = schools ? 5 : 4;  // code, names, state, stage: left-aligned and escaped

    function filter() {
      var words = fold(query.value).split(/\s+/).filter(Boolean);
      var wantedUf = ufPick.value, wantedStage = stagePick.value === "" ? null : Number(stagePick.value);
      if (schools && words.length === 0) { return null; }
      return data.rows.filter(function (r) {
        if (wantedStage !== null && r[1] !== wantedStage) { return false; }
        if (wantedUf && uf(r) !== wantedUf) { return false; }
        var hay = haystack[r[0]];
        return words.every(function (w) { return hay.indexOf(w) >= 0; });
      });
    }
    function sorted(rows) {
      if (!order.key) { return rows; }
      var key = keys[order.key];
      return rows.slice().sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === y) { return 0; }
        if (x === null || x === undefined) { return 1; }
        if (y === null || y === undefined) { return -1; }
        return (x < y ? -1 : 1) * order.sign;
      });
    }
    function cells(r) {
      var p = places[r[0]];
      var out = [p[0], p[1]];
      out.push(schools ? muniName(r) : p[2]);
      if (schools) { out.push(uf(r)); }
      out.push(stages[r[1]][1], integer(r[2]));
      years.forEach(function (_, i) {
        var at = 3 + 3 * i;
        var range = r[at + 1] === null ? "" : "<small>" + integer(r[at + 1]) + "–" + integer(r[at + 2]) + "</small>";
        out.push(r[at] === null ? "–" : integer(r[at]) + range);  // a horizon never validated has no range
      });
      out.push(tenths(r[r.length - 1]));
      return out;
    }
    function escape(text) {
      return String(text).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; });
    }
    function render() {
      var rows = filter();
      if (rows === null) {
        matches = [];
        body.innerHTML = "";
        count.textContent = texts.school_type;
        more.hidden = true;
        return;
      }
      matches = sorted(rows);
      var html = matches.slice(0, shown).map(function (r) {
        return "<tr>" + cells(r).map(function (c, i) {
          return i < textColumns ? '<td class="t">' + escape(c) + "</td>" : "<td>" + c + "</td>";
        }).join("") + "</tr>";
      });
      body.innerHTML = html.join("");
      count.textContent = fill(texts.shown, {shown: integer(Math.min(shown, matches.length)), total: integer(matches.length)});
      more.hidden = matches.length <= shown;
    }
    function download() {
      var head = schools
        ? ["CO_ENTIDADE", "NO_ENTIDADE", "CO_MUNICIPIO", "NO_MUNICIPIO", "SG_UF"]
        : ["CO_MUNICIPIO", "NO_MUNICIPIO", "SG_UF"];
      head = head.concat(data.csv_columns);
      var lines = [head.join(",")];
      matches.forEach(function (r) {
        var p = places[r[0]];
        var who = schools ? [p[0], p[1]].concat((munis[p[2]] || ["", "", ""]).slice(0, 3)) : p.slice(0, 3);
        years.forEach(function (year, i) {
          var at = 3 + 3 * i;
          if (r[at] === null) { return; }
          lines.push(who.concat([stages[r[1]][0], year, r[2], r[at], r[at + 1], r[at + 2]]).map(csvCell).join(","));
        });
      });
      var blob = new Blob(["\ufeff" + lines.join("\n") + "\n"], {type: "text/csv;charset=utf-8"});
      var link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = "previsoes_" + data.kind + "_filtradas.csv";
      document.body.appendChild(link);
      link.click();
      setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 0);
    }
    [query, ufPick, stagePick].forEach(function (el) {
      el.addEventListener("input", function () { shown = PAGE; render(); });
    });
    more.addEventListener("click", function () { shown += PAGE; render(); });
    root.querySelector("button.download").addEventListener("click", download);
    root.querySelectorAll("th[data-key]").forEach(function (th) {
      th.addEventListener("click", function () {
        var key = th.getAttribute("data-key");
        order = {key: key, sign: order.key === key ? -order.sign : 1};
        root.querySelectorAll("th[data-key]").forEach(function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", order.sign > 0 ? "ascending" : "descending");
        render();
      });
    });
    render();
  }

  /* The 27-state tile map: recoloured and relabelled from its JSON when the stage or year changes. */
  function TileMap(root) {
    var data = JSON.parse(root.querySelector(".map-data").textContent);
    var stagePick = root.querySelector("select.map-stage"), yearPick = root.querySelector("select.map-year");
    function render() {
      var values = (data[stagePick.value] || {})[yearPick.value] || {};
      var largest = 0.01;
      Object.keys(values).forEach(function (uf) {
        var f = values[uf][2];
        if (f !== null && Math.abs(f) > largest) { largest = Math.abs(f); }
      });
      root.querySelectorAll(".tile").forEach(function (tile) {
        var v = values[tile.getAttribute("data-uf")];
        tile.querySelector(".change").textContent = v ? v[1] : texts.no_data;
        tile.querySelector(".students").textContent = v ? v[0] : "";
        tile.style.background = colour(v ? v[2] : null, largest);
        tile.classList.toggle("strong", !!v && v[2] !== null && Math.abs(v[2]) / largest > 0.55);
      });
    }
    stagePick.addEventListener("input", render);
    yearPick.addEventListener("input", render);
    render();
  }

  /* A select that shows the block of the chosen stage (the top-ten lists). */
  function StagePicker(select) {
    var blocks = document.querySelectorAll(select.getAttribute("data-blocks"));
    function show() {
      blocks.forEach(function (b) { b.hidden = b.getAttribute("data-stage") !== select.value; });
    }
    select.addEventListener("input", show);
    show();
  }

  document.querySelectorAll(".finder").forEach(Finder);
  document.querySelectorAll(".tilemap-block").forEach(TileMap);
  document.querySelectorAll("select.stage-picker").forEach(StagePicker);
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  });
})();
