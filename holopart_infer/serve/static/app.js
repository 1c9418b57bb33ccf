// The page's logic: upload (or pick an embedded object), follow the job, show both views.
// URL parameters: ?demo=NAME&autorun=1 starts a job on an embedded object at load;
// ?job=ID shows an existing job. Everything is fetched from this server.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const camera = new HoloViewer.Camera();
  let views;
  try {
    views = { input: new HoloViewer.Viewer($("input-view"), camera), output: new HoloViewer.Viewer($("output-view"), camera) };
  } catch (e) {
    say(`Cannot draw here: ${e.message}`, true);
  }
  let token = sessionStorage.getItem("holopart-token") || params.get("token") || "";
  let downloadUrl = null;

  function say(text, error = false) {
    $("message").textContent = text;
    $("message").className = error ? "error" : "";
  }
  function progress(fraction) { $("bar").style.width = `${Math.round(100 * Math.max(0, Math.min(1, fraction)))}%`; }

  async function api(path, init = {}) {
    init.headers = Object.assign({}, init.headers || {}, token ? { Authorization: `Bearer ${token}` } : {});
    const r = await fetch(path, init);
    if (r.status === 401) {
      $("token-label").hidden = false;
      throw new Error("this service needs a token: enter it and try again");
    }
    if (!r.ok) {
      let msg = `${r.status}`;
      try { const j = await r.json(); msg = j.error ? `${j.error.kind}: ${j.error.message}` : msg; } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    return r;
  }

  function legend(parts) {
    const ul = $("legend");
    ul.textContent = "";
    for (const p of parts) {
      const li = document.createElement("li");
      const sw = document.createElement("i");
      sw.style.background = `rgb(${p.color.join(",")})`;
      li.dataset.name = p.name;
      li.append(sw, p.name);
      ul.append(li);
    }
  }

  // one badge per part: how much to trust it (holopart_infer.quality), with the measures on hover
  function badges(quality) {
    const byName = new Map(quality.map((q) => [q.name, q]));
    for (const li of $("legend").children) {
      const q = byName.get(li.dataset.name);
      if (!q) continue;
      const b = document.createElement("span");
      b.className = `badge ${q.status}`;
      b.textContent = q.status;
      const cov = q.coverage_p90 === null ? "inf" : q.coverage_p90.toFixed(3);
      b.title = `coverage p90 ${cov}, growth x${q.growth_extent.toFixed(2)} (object x${q.object_extent.toFixed(2)}), ` +
        `${q.pieces} piece(s), ${q.closed ? "closed" : "open"}` + (q.reasons.length ? `: ${q.reasons.join(", ")}` : "");
      li.append(b);
    }
  }

  async function showMeshes(jobId, which) {
    const data = await (await api(`/v1/jobs/${jobId}/meshes.json?which=${which}`)).json();
    if (!views) return;
    views[which].setParts(data.parts);
    if (which === "input") {
      camera.fit(views.input.bounds());
      legend(data.parts);
    } else {
      camera.redraw();
    }
  }

  async function follow(jobId) {
    await showMeshes(jobId, "input");
    let job = await (await api(`/v1/jobs/${jobId}`)).json();
    while (job.state === "queued" || job.state === "running") {
      const stage = job.state === "queued" ? "waiting in the queue" : `${job.stage} ${job.total ? `${job.done}/${job.total}` : ""}`;
      say(`${job.parts} parts: ${stage}`);
      progress(job.state === "queued" ? 0.02 : job.total ? job.done / job.total : 0.05);
      // long poll: the server answers when the job changes (or after 20 s)
      job = await (await api(`/v1/jobs/${jobId}?wait=20`)).json();
    }
    if (job.state !== "done") throw new Error(job.error ? `${job.error.kind}: ${job.error.message}` : job.state);
    progress(1);
    await showMeshes(jobId, "output");
    const glb = await (await api(`/v1/jobs/${jobId}/result.glb`)).blob();
    if (downloadUrl) URL.revokeObjectURL(downloadUrl);
    downloadUrl = URL.createObjectURL(glb);
    const a = $("download");
    a.href = downloadUrl;
    a.download = `${(job.source || "object").replace(/^demo:/, "").replace(/\.[^.]*$/, "")}_completed.glb`;
    a.hidden = false;
    badges(job.quality || []);
    const replaced = (job.quality || []).filter((q) => q.replaced).length;
    say(`Done: ${job.parts} parts in ${job.elapsed_s.toFixed(1)} s (batch of ${job.batch.objects || 1} object(s))` +
        (replaced ? `; ${replaced} part(s) replaced by their visible patch (implausible or empty).` : "."));
    document.body.dataset.state = "done";
  }

  async function start() {
    token = $("token").value || token;
    if (token) sessionStorage.setItem("holopart-token", token);
    $("download").hidden = true;
    progress(0);
    const q = new URLSearchParams();
    if ($("seed").value !== "") q.set("seed", $("seed").value);
    if ($("steps").value !== "") q.set("steps", $("steps").value);
    const file = $("file").files[0];
    const demo = $("demo").value;
    let init = { method: "POST" };
    if (file) {
      init.body = file;
      init.headers = { "Content-Type": "model/gltf-binary" };
    } else if (demo) {
      q.set("demo", demo);
    } else {
      say("Choose a .glb file or an embedded object first.", true);
      return;
    }
    try {
      say(file ? `Uploading ${file.name}...` : `Starting ${demo}...`);
      const job = await (await api(`/v1/jobs?${q}`, init)).json();
      await follow(job.id);
    } catch (e) {
      say(e.message, true);
      document.body.dataset.state = "error";
    }
  }

  async function init() {
    try {
      const objs = (await (await api("/v1/demo-objects")).json()).objects;
      for (const o of objs) {
        const opt = document.createElement("option");
        opt.value = o.name;
        opt.textContent = o.name;
        opt.title = o.description;
        $("demo").append(opt);
      }
    } catch (e) {
      say(e.message, true);
    }
    $("run").addEventListener("click", start);
    $("demo").addEventListener("change", () => { $("file").value = ""; });
    if (params.get("demo")) {
      $("demo").value = params.get("demo");
      if (params.get("steps")) $("steps").value = params.get("steps");
      if (params.get("autorun")) start();
    } else if (params.get("job")) {
      follow(params.get("job")).catch((e) => say(e.message, true));
    }
  }
  window.addEventListener("resize", () => camera.redraw());
  init();
})();
