"use strict";
// The page of `ctdata app`. Every call carries this run's key (from the address) in a
// header; everything shown is set as text, never as HTML.
(function () {
  const key = new URLSearchParams(location.search).get("key") || "";
  const given = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);
  let last = null;
  let settingsFilled = false;
  let settingsShown = false;
  let stopped = false;
  let timer = null;

  async function call(method, path, body, type) {
    const headers = { "x-ctdata-key": key };
    if (body !== undefined && type === undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(body);
    } else if (type) {
      headers["content-type"] = type;
    }
    const r = await fetch("/api/" + path, { method, headers, body });
    const text = await r.text();
    let data = null;
    try { data = JSON.parse(text); } catch (e) { data = { ok: false, lines: [text.trim()] }; }
    return { status: r.status, data };
  }

  function item(list, main, parts) {
    const li = document.createElement("li");
    li.append(document.createTextNode(main));
    for (const [cls, text] of parts || []) {
      if (!text) continue;
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      li.append(span);
    }
    list.append(li);
    return li;
  }

  function fill(list, rows, empty, each) {
    list.textContent = "";
    if (!rows.length) {
      const li = item(list, empty);
      li.className = "empty";
      return;
    }
    rows.forEach((r) => each(r));
  }

  function said(list, data) {
    list.textContent = "";
    for (const l of data.lines || []) item(list, l).className = data.ok ? "good" : "bad";
  }

  function bytes(n) {
    if (n >= 1048576) return (n / 1048576).toFixed(1) + " MB";
    if (n >= 1024) return Math.round(n / 1024) + " KB";
    return n + " bytes";
  }

  function count(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  // "000012-….ndjson" is batch 12; a file named otherwise keeps its name.
  function batchName(b) {
    const seq = /^0*(\d+)-/.exec(b.name);
    const name = seq ? "Batch " + seq[1] : b.name;
    return b.sightings == null ? name : name + " (" + count(b.sightings, "sighting", "sightings") + ")";
  }

  function unsent(v) {
    return v.pending.length + (v.open_sightings > 0 ? 1 : 0);
  }

  function showSend(s) {
    const busy = s.running;
    $("send").disabled = busy || !(last && last.settings);
    $("send").textContent = busy ? "Sending…" : "Tap to send";
    $("send-progress").hidden = !busy;
    if (busy) {
      const bar = $("send-bar");
      if (s.total > 0) {
        bar.max = s.total;
        bar.value = s.bytes;
      } else {
        bar.removeAttribute("value");
      }
      let text;
      if (s.total === 0) text = "Getting ready…";
      else if (s.bytes < s.total) text = "Sending " + (s.step ? s.step + ": " : "") + bytes(s.bytes) + " of " + bytes(s.total);
      else text = "All " + bytes(s.total) + " sent; waiting for the server to store it…";
      $("send-status").textContent = text;
    }
    const res = $("send-result");
    if (s.result && !busy) {
      res.textContent = s.result.headline;
      res.className = s.result.level;
      $("send-detail").textContent = s.result.detail;
    } else if (busy) {
      res.textContent = "";
      $("send-detail").textContent = "";
    }
  }

  function render(v) {
    last = v;
    const problem = $("setup-problem");
    problem.hidden = !v.settings_problem;
    problem.textContent = v.settings_problem
      ? "Not set up yet: " + v.settings_problem + " Fill in the settings below and save them."
      : "";
    $("device").textContent = v.settings ? "· " + v.settings.device : "";
    showSend(v.send);

    $("open-batch").textContent = v.open_sightings
      ? v.open_sightings + " new sightings not yet in a batch; they go with the next send."
      : "";
    fill($("pending"), v.pending, "Nothing is waiting: everything is sent.", (b) =>
      item($("pending"), batchName(b), [["what", b.state], ["why", b.why]]));
    $("refused-box").hidden = v.refused.length === 0;
    fill($("refused"), v.refused, "", (b) =>
      item($("refused"), batchName(b), [["why", b.why]]));
    $("last-success").textContent = v.send.result ? ""
      : v.last_success ? "Last good send: " + v.last_success : "Nothing sent yet.";

    const a = v.autosend;
    $("autosend-on").checked = a.running;
    let info;
    if (!a.running) info = "Off: data goes only when you tap Send.";
    else {
      info = a.ours ? "On" : "On (started outside this window)";
      if (a.every_secs) info += ", every " + everyWords(a.every_secs);
      info += ". Last try: " + (a.last_attempt || "not yet") + ". Next try: " + (a.next_attempt || "soon") + ".";
      if (a.failures === 1) info += " The last try failed.";
      else if (a.failures > 1) info += " " + a.failures + " tries in a row failed.";
    }
    if (v.sync_off) info += " Sync is off for this device, so auto-send does not run.";
    $("autosend-info").textContent = info;

    fill($("recent"), v.recent, "No sightings yet.", (s) => {
      const what = [s.time, s.count != null ? s.count + " seen" : "", s.observer, s.position,
        s.sent ? "sent" : "not sent yet"].filter(Boolean).join(" · ");
      item($("recent"), s.species || "(no species)", [["what", what], ["what", s.notes]]);
    });
    fill($("sent"), v.sent, "No batches sent yet.", (b) =>
      item($("sent"), batchName(b), [["what", b.state]]));

    $("sync-state").textContent = v.sync_off
      ? "Sync is off: auto-send does not run. Your data stays on this computer."
      : "Sync is on.";
    $("sync-toggle").textContent = v.sync_off ? "Turn sync on" : "Turn sync off";

    // Filled once, from what is saved: later polls never overwrite what is being typed.
    if (!settingsFilled) {
      settingsFilled = true;
      downloadShown();
      protocolShown();
    }
    if (v.settings && !settingsShown) {
      settingsShown = true;
      const s = v.settings;
      $("s-protocol").value = s.protocol;
      $("s-url").value = s.url;
      $("s-device").value = s.device;
      $("s-user").value = s.user || "";
      $("s-token").placeholder = s.has_token ? "saved (leave empty to keep it)" : "";
      $("s-ca").value = s.ca_file || "";
      $("d-same").checked = s.download_same;
      $("d-url").value = s.download_same ? "" : s.download_url;
      $("d-token").placeholder = s.download_has_token && !s.download_same ? "saved (leave empty to keep it)" : "";
      downloadShown();
      protocolShown();
    }
    if (!$("r-lat").value && !$("r-lon").value) {
      const [lat, lon] = [given.get("lat"), given.get("lon")];
      if (lat && lon) { $("r-lat").value = lat; $("r-lon").value = lon; }
      else if (v.recent.length) {
        const p = v.recent[0].position.split(", ");
        $("r-lat").value = p[0]; $("r-lon").value = p[1];
      }
    }
  }

  function everyWords(secs) {
    if (secs % 3600 === 0) return secs === 3600 ? "hour" : secs / 3600 + " hours";
    if (secs % 60 === 0) return secs === 60 ? "minute" : secs / 60 + " minutes";
    return secs + " seconds";
  }

  async function refresh() {
    if (stopped) return;
    clearTimeout(timer);
    try {
      const r = await call("GET", "overview");
      if (r.status === 200) render(r.data);
    } catch (e) {
      // The program stopped or restarted; keep showing what we had.
    }
    clearTimeout(timer);
    timer = setTimeout(refresh, last && last.send.running ? 250 : 1500);
  }

  function nowLocal() {
    const d = new Date();
    d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
    return d.toISOString().slice(0, 19);
  }

  // "2024-05-01T06:30:00" in the browser's zone → RFC 3339 with its offset.
  function withOffset(local) {
    if (!local) return null;
    const full = local.length === 16 ? local + ":00" : local;
    const off = -new Date(full).getTimezoneOffset();
    const sign = off >= 0 ? "+" : "-";
    const h = String(Math.floor(Math.abs(off) / 60)).padStart(2, "0");
    const m = String(Math.abs(off) % 60).padStart(2, "0");
    return full + sign + h + ":" + m;
  }

  function downloadShown() {
    const same = $("d-same").checked;
    document.querySelectorAll(".download").forEach((e) => (e.hidden = same));
  }

  function protocolShown() {
    const p = $("s-protocol").value;
    $("s-user").closest("label").hidden = !(p === "ftp" || p === "ftps");
    $("s-token").closest("label").hidden = p === "share";
    $("s-ca").closest("label").hidden = p === "share";
  }

  $("send").addEventListener("click", async () => {
    $("send").disabled = true;
    const r = await call("POST", "send");
    if (r.status !== 202) {
      $("send-result").textContent = (r.data.lines || []).join(" ");
      $("send-result").className = "bad";
      $("send").disabled = false;
    }
    refresh();
  });

  async function autosendChanged() {
    const on = $("autosend-on").checked;
    const r = await call("POST", "autosend", { on, every: $("autosend-every").value });
    $("autosend-msg").textContent = (r.data.lines || []).join(" ");
    $("autosend-msg").className = "small " + (r.data.ok ? "good" : "bad");
    refresh();
  }
  $("autosend-on").addEventListener("change", autosendChanged);
  $("autosend-every").addEventListener("change", () => {
    if ($("autosend-on").checked) autosendChanged();
  });

  $("record-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {
      at: withOffset($("r-at").value),
      lat: $("r-lat").value, lon: $("r-lon").value,
      species: $("r-species").value, count: $("r-count").value,
      observer: $("r-observer").value, notes: $("r-notes").value,
    };
    const r = await call("POST", "record", body);
    const msg = $("record-msg");
    msg.className = r.data.ok ? "good" : "bad";
    msg.textContent = r.data.ok ? "Saved. It goes with the next send." : (r.data.lines || []).join(" ");
    if (r.data.ok) {
      $("r-species").value = ""; $("r-count").value = ""; $("r-notes").value = "";
      $("r-at").value = nowLocal();
      try { localStorage.setItem("ctdata-observer", $("r-observer").value); } catch (e) {}
    }
  });

  $("r-here").addEventListener("click", () => {
    if (!navigator.geolocation) return;
    navigator.geolocation.getCurrentPosition((p) => {
      $("r-lat").value = p.coords.latitude.toFixed(6);
      $("r-lon").value = p.coords.longitude.toFixed(6);
    }, (e) => { $("record-msg").textContent = "No position: " + e.message; $("record-msg").className = "bad"; });
  });

  $("import-btn").addEventListener("click", async () => {
    const file = $("import-file").files[0];
    const list = $("import-msg");
    if (!file) { said(list, { ok: false, lines: ["Choose a file first."] }); return; }
    $("import-btn").disabled = true;
    said(list, { ok: true, lines: ["Importing " + file.name + "…"] });
    const r = await call("POST", "import?name=" + encodeURIComponent(file.name), file, "application/octet-stream");
    $("import-btn").disabled = false;
    said(list, r.data);
  });

  $("d-same").addEventListener("change", downloadShown);
  $("s-protocol").addEventListener("change", protocolShown);

  $("settings-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {
      protocol: $("s-protocol").value, url: $("s-url").value, device: $("s-device").value,
      user: $("s-user").value, token: $("s-token").value, ca_file: $("s-ca").value,
      download_same: $("d-same").checked, download_url: $("d-url").value, download_token: $("d-token").value,
    };
    const r = await call("POST", "settings", body);
    // `init` says "wrote PATH: device … sends over …": the path means nothing here.
    r.data.lines = (r.data.lines || []).map((l) => l.replace(/^wrote [^\n]*?config\.toml: /, "Saved: "));
    said($("settings-msg"), r.data);
    if (r.data.ok) {
      settingsShown = true;
      for (const id of ["s-token", "d-token"]) {
        const e = $(id);
        if (e.value) e.placeholder = "saved (leave empty to keep it)";
        e.value = "";
      }
    }
  });

  $("test-btn").addEventListener("click", async () => {
    const list = $("test-steps");
    list.textContent = "";
    item(list, "Testing the saved settings…").className = "info";
    $("test-btn").disabled = true;
    const r = await call("POST", "test");
    $("test-btn").disabled = false;
    list.textContent = "";
    const marks = { ok: "✓", failed: "✗", skipped: "–", info: "" };
    for (const s of r.data.steps || r.data.lines.map((l) => ({ mark: "failed", text: l }))) {
      const li = document.createElement("li");
      li.className = s.mark;
      const m = document.createElement("span");
      m.className = "mark";
      m.textContent = marks[s.mark];
      li.append(m, document.createTextNode(s.text));
      list.append(li);
    }
    const end = document.createElement("li");
    end.className = r.data.ok ? "ok" : "failed";
    end.textContent = r.data.ok ? "The connection works." : "The connection does not work: see the step marked ✗.";
    list.append(end);
  });

  $("sync-toggle").addEventListener("click", async () => {
    const on = !!(last && last.sync_off);
    const r = await call("POST", "sync", { on });
    if (r.data.ok) r.data.lines = [on ? "Sync is on again." : "Sync is off: auto-send stops and will not start. Your data stays here."];
    said($("sync-msg"), r.data);
    refresh();
  });

  let purgeCount = 0;
  $("purge-btn").addEventListener("click", () => {
    if (!last) return;
    purgeCount = unsent(last);
    const sightings = last.pending.reduce((n, b) => n + (b.sightings || 0), 0) + last.open_sightings;
    $("purge-text").textContent = purgeCount === 0
      ? "Nothing is waiting to be sent. This deletes the copies of sent batches, their receipts and downloaded files on this computer."
      : "This deletes " + count(purgeCount, "unsent batch", "unsent batches") +
        " (" + count(sightings, "sighting", "sightings") + ") that the server does NOT have yet, and the copies of sent batches on this computer. It cannot be undone.";
    $("purge-yes").textContent = purgeCount === 0 ? "Yes, delete"
      : "Yes, delete " + purgeCount + (purgeCount === 1 ? " unsent batch" : " unsent batches");
    $("purge-confirm").hidden = false;
  });
  $("purge-no").addEventListener("click", () => { $("purge-confirm").hidden = true; });
  $("purge-yes").addEventListener("click", async () => {
    const r = await call("POST", "purge", { unsent: purgeCount });
    $("purge-confirm").hidden = true;
    if (r.data.ok) r.data.lines = ["Deleted. This device's data on this computer is gone; the settings stay."];
    said($("sync-msg"), r.data);
    refresh();
  });

  $("quit").addEventListener("click", async () => {
    await call("POST", "quit");
    stopped = true;
    $("stopped").hidden = false;
    document.querySelectorAll("button, input, select, textarea").forEach((e) => (e.disabled = true));
  });

  $("r-at").value = nowLocal();
  try { $("r-observer").value = localStorage.getItem("ctdata-observer") || ""; } catch (e) {}
  refresh();
})();
