// meshemu view: draws a scene that Python worked out (meshemu/view/scene.py).
// The page computes no orbits and no routes: it decodes positions and link
// states, interpolates positions between steps, and draws. It keeps its state
// on document.body's data attributes so that a headless browser can check it.
(function () {
  "use strict";
  const scene = JSON.parse(document.getElementById("scene").textContent);
  const body = document.body;
  const hash = new URLSearchParams(location.hash.slice(1));
  const EARTH_RADIUS_M = 6378137.0; // scene unit: the equatorial radius

  // ---- decode ----------------------------------------------------------
  function bytesOf(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  const times = scene.times_s, T = times.length, N = scene.n_satellites;
  const names = scene.node_names, shortNames = scene.short_names, G = names.length - N;
  const satQ = new Int16Array(bytesOf(scene.satellite_positions_b64).buffer); // (T, N, 3)
  const unit = scene.position_unit_m / EARTH_RADIUS_M;
  const upBits = bytesOf(scene.link_up_b64), upStride = scene.link_up_bytes_per_step;
  const links = scene.links, L = links.length / 2;
  const isGsl = new Uint8Array(L);
  for (let l = 0; l < L; l++) isGsl[l] = links[2 * l + 1] >= N ? 1 : 0;
  const nIsl = L - isGsl.reduce((a, b) => a + b, 0);
  function isUp(k, l) { return (upBits[k * upStride + (l >> 3)] >> (l & 7)) & 1; }
  // Earth-fixed (x, y, z north) to three.js (y up): a rotation, so nothing is mirrored.
  function toThree(x, y, z, out, o) { out[o] = x; out[o + 1] = z; out[o + 2] = -y; }
  const stationPos = new Float32Array(G * 3);
  scene.station_positions_m.forEach(function (p, g) {
    const r = Math.hypot(p[0], p[1], p[2]) / 1.004; // lifted a little, so the globe never hides a station
    toThree(p[0] / r, p[1] / r, p[2] / r, stationPos, 3 * g);
  });

  // ---- time ------------------------------------------------------------
  const state = {
    t: times[0], playing: hash.get("play") !== "0" && scene.mode !== "live", speed: 10,
    pair: Math.min(parseInt(hash.get("pair") || "0", 10), scene.routes.length - 1),
    view: hash.get("view") === "map" ? "map" : "globe", selected: -1, liveStep: -1, liveScale: 1,
    show: { satellites: hash.get("hide") !== "satellites", isls: true, gsls: true, trip: true },
  };
  if (hash.has("t")) state.t = Math.min(Math.max(parseFloat(hash.get("t")), times[0]), times[T - 1]);
  if (hash.has("speed")) state.speed = parseFloat(hash.get("speed"));
  function stepAt(t) { // the last step at or before t, as LinkSeries.step_index
    let lo = 0, hi = T - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (times[mid] <= t + 1e-9) lo = mid; else hi = mid - 1; }
    return lo;
  }
  const satNow = new Float32Array(N * 3); // three.js coordinates, Earth radii
  function positionsAt(t) {
    const k = stepAt(t), k2 = Math.min(k + 1, T - 1);
    const f = k2 > k ? (t - times[k]) / (times[k2] - times[k]) : 0;
    const a = k * N * 3, b = k2 * N * 3;
    for (let i = 0; i < N; i++) {
      const j = 3 * i;
      const x0 = satQ[a + j], y0 = satQ[a + j + 1], z0 = satQ[a + j + 2];
      const x1 = satQ[b + j], y1 = satQ[b + j + 1], z1 = satQ[b + j + 2];
      let x = x0 + (x1 - x0) * f, y = y0 + (y1 - y0) * f, z = z0 + (z1 - z0) * f;
      // a straight line between two points of an orbit cuts inside it: put the radius back
      const r0 = Math.hypot(x0, y0, z0), r1 = Math.hypot(x1, y1, z1), r = Math.hypot(x, y, z) || 1;
      const s = (r0 + (r1 - r0) * f) / r * unit;
      toThree(x * s, y * s, z * s, satNow, j);
    }
    return k;
  }
  function nodePos(v, out, o) {
    const src = v < N ? satNow : stationPos, i = v < N ? v : v - N;
    out[o] = src[3 * i]; out[o + 1] = src[3 * i + 1]; out[o + 2] = src[3 * i + 2];
  }

  // ---- controls --------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  const speeds = [1, 2, 5, 10, 30, 60, 120, 300, 600];
  speeds.forEach(function (s) { const o = document.createElement("option"); o.value = s; o.textContent = s + " x"; $("speed").appendChild(o); });
  if (speeds.indexOf(state.speed) < 0) { const o = document.createElement("option"); o.value = state.speed; o.textContent = state.speed + " x"; $("speed").appendChild(o); }
  $("speed").value = String(state.speed);
  $("speed").onchange = function () { state.speed = parseFloat(this.value); };
  $("play").onclick = function () { state.playing = !state.playing; if (state.playing && state.t >= times[T - 1]) state.t = times[0]; };
  window.addEventListener("keydown", function (e) { if (e.code === "Space" && e.target === body) { e.preventDefault(); $("play").onclick(); } });
  const tSpan = Math.max(times[T - 1] - times[0], 1e-9);
  $("slider").oninput = function () { state.t = times[0] + tSpan * this.value / 1000; state.playing = false; };
  $("toggle").onclick = function () { state.view = state.view === "globe" ? "map" : "globe"; layout(); };
  scene.routes.forEach(function (r, i) { const o = document.createElement("option"); o.value = i; o.textContent = r.label; $("pair").appendChild(o); });
  if (!scene.routes.length) { const o = document.createElement("option"); o.textContent = "no station pair in this series"; $("pair").appendChild(o); }
  $("pair").value = String(state.pair);
  $("pair").onchange = function () { state.pair = parseInt(this.value, 10); drawCharts(); };
  ["satellites", "isls", "gsls", "trip"].forEach(function (k) {
    $("show-" + k).checked = state.show[k];
    $("show-" + k).onchange = function () { state.show[k] = this.checked; };
  });
  $("title").textContent = scene.title;
  $("mode").textContent = { export: "exported page", replay: "replay", live: "live" }[scene.mode] || scene.mode;
  if (scene.run) { // meshemu run --view: which experiment of the file this is
    body.dataset.run = scene.run.label;
    if (scene.run.count > 1) $("mode").textContent = "live, " + scene.run.label;
  }
  if (scene.mode === "live") { // the player sets the pace
    $("play").disabled = true; $("slider").disabled = true; $("speed").disabled = true; $("play").textContent = "Live";
  }

  // ---- globe (three.js) ------------------------------------------------
  const canvas = $("globe");
  let renderer = null;
  const gpuName = (function () { // software WebGL (no GPU) cannot afford multisampling at 30 frames/s
    try {
      const gl = document.createElement("canvas").getContext("webgl2"), ext = gl && gl.getExtension("WEBGL_debug_renderer_info");
      const name = ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL) : (gl ? gl.getParameter(gl.RENDERER) : "none");
      const lose = gl && gl.getExtension("WEBGL_lose_context"); if (lose) lose.loseContext();
      return String(name);
    } catch (err) { return "none"; }
  })();
  const software = /swiftshader|llvmpipe|softpipe|software/i.test(gpuName);
  body.dataset.renderer = gpuName;
  try {
    const aa = hash.has("aa") ? hash.get("aa") === "1" : !software;
    renderer = new THREE.WebGLRenderer({ canvas: canvas, antialias: aa, preserveDrawingBuffer: false });
  } catch (err) {
    body.dataset.webgl = "0"; // no WebGL here: the 2-D map still works
    state.view = "map";
  }
  const scene3 = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(40, 1, 0.01, 100);
  camera.position.set(0, 1.2, 4.2);
  (function aim() { // face the chosen pair's first station (or the client), where the story is
    const r = scene.routes[state.pair], v = r ? r.src : (scene.client ? scene.short_names.indexOf(scene.client) : -1);
    if (v < N) return;
    const p = stationPos.subarray(3 * (v - N), 3 * (v - N) + 3), len = Math.hypot(p[0], p[1], p[2]);
    camera.position.set(p[0] / len * 4.2, p[1] / len * 4.2, p[2] / len * 4.2);
  })();
  let controls = null;
  if (renderer) {
    renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    renderer.setClearColor(0x05070d);
    controls = new OrbitControls(camera, canvas);
    controls.enablePan = false; controls.minDistance = 1.3; controls.maxDistance = 12;
  }
  scene3.add(new THREE.AmbientLight(0xffffff, 1.6));
  const sun = new THREE.DirectionalLight(0xffffff, 1.2); sun.position.set(5, 3, 5); scene3.add(sun);
  scene3.add(new THREE.Mesh(new THREE.SphereGeometry(0.997, 64, 48),
                            new THREE.MeshBasicMaterial({ color: 0x123a6b })));
  function lonLat(lon, lat, r, out, o) {
    const p = Math.PI / 180, c = Math.cos(lat * p);
    toThree(r * c * Math.cos(lon * p), r * c * Math.sin(lon * p), r * Math.sin(lat * p), out, o);
  }
  const atlas = window.WORLD_ATLAS;
  const landRings = [];
  topojson.feature(atlas.land, atlas.land.objects.land).features.forEach(function (f) {
    const polys = f.geometry.type === "Polygon" ? [f.geometry.coordinates] : f.geometry.coordinates;
    polys.forEach(function (poly) { poly.forEach(function (ring) { landRings.push(ring); }); });
  });
  const borders = topojson.mesh(atlas.countries, atlas.countries.objects.countries, function (a, b) { return a !== b; }).coordinates;
  function outline(lines, color, opacity) {
    let n = 0; lines.forEach(function (l) { n += l.length - 1; });
    const pos = new Float32Array(n * 6); let o = 0;
    lines.forEach(function (l) {
      for (let i = 0; i + 1 < l.length; i++) { lonLat(l[i][0], l[i][1], 1.0005, pos, o); lonLat(l[i + 1][0], l[i + 1][1], 1.0005, pos, o + 3); o += 6; }
    });
    const g = new THREE.BufferGeometry(); g.setAttribute("position", new THREE.BufferAttribute(pos, 3));
    return new THREE.LineSegments(g, new THREE.LineBasicMaterial({ color: color, transparent: true, opacity: opacity }));
  }
  scene3.add(outline(landRings, 0x9fc5e8, 0.9));
  scene3.add(outline(borders, 0x5d7fa6, 0.45));

  function dotTexture() { // drawn here, so nothing is loaded
    const c = document.createElement("canvas"); c.width = c.height = 32;
    const x = c.getContext("2d"); x.fillStyle = "#fff"; x.beginPath(); x.arc(16, 16, 14, 0, 2 * Math.PI); x.fill();
    return new THREE.CanvasTexture(c);
  }
  const dot = dotTexture();
  function points(n, size, colors, positions) {
    const g = new THREE.BufferGeometry();
    g.setAttribute("position", new THREE.BufferAttribute(positions || new Float32Array(n * 3), 3));
    g.setAttribute("color", new THREE.BufferAttribute(colors, 3));
    const m = new THREE.PointsMaterial({ size: size, sizeAttenuation: false, vertexColors: true, map: dot, alphaTest: 0.5 });
    const p = new THREE.Points(g, m); p.frustumCulled = false; return p;
  }
  // one draw call for all satellites, colour by orbital plane
  const satColors = new Float32Array(N * 3), tmpColor = new THREE.Color();
  const nPlanes = Math.max(1, Math.max.apply(null, scene.planes.concat([0])) + 1);
  for (let i = 0; i < N; i++) {
    const plane = scene.planes[i] >= 0 ? scene.planes[i] : i;
    tmpColor.setHSL(((plane / nPlanes) * 0.8 + 0.45) % 1, 0.6, 0.75);
    satColors[3 * i] = tmpColor.r; satColors[3 * i + 1] = tmpColor.g; satColors[3 * i + 2] = tmpColor.b;
  }
  const satPoints = points(N, N > 600 ? 3.5 : 6, satColors, satNow);
  scene3.add(satPoints);
  const stColors = new Float32Array(G * 3);
  for (let g = 0; g < G; g++) { stColors[3 * g] = 0.35; stColors[3 * g + 1] = 0.94; stColors[3 * g + 2] = 0.66; }
  const stPoints = points(G, 5, stColors, stationPos);
  scene3.add(stPoints);
  function segments(maxSegments, color, opacity) {
    const g = new THREE.BufferGeometry();
    g.setAttribute("position", new THREE.BufferAttribute(new Float32Array(Math.max(maxSegments, 1) * 6), 3));
    g.setDrawRange(0, 0);
    const s = new THREE.LineSegments(g, new THREE.LineBasicMaterial({ color: color, transparent: opacity < 1, opacity: opacity }));
    s.frustumCulled = false; return s;
  }
  const islLines = segments(nIsl, 0x4aa3ff, N > 600 ? 0.28 : 0.55);
  const gslLines = segments(L - nIsl, 0xff9f43, 0.75);
  const routeLines = segments(Math.max(N, 64), 0xffd166, 1.0);
  const trip = scene.token_trip;
  let tripMax = 0;
  if (trip) trip.steps.forEach(function (st) { let n = 0; st.segments.concat([st.prompt || []]).forEach(function (g) { n += Math.max(g.length - 1, 0); }); tripMax = Math.max(tripMax, n); });
  function coloured(maxSegments) { // line segments with a colour per vertex: the traffic colour ramp
    const s = segments(maxSegments, 0xffffff, 1.0);
    s.geometry.setAttribute("color", new THREE.BufferAttribute(new Float32Array(Math.max(maxSegments, 1) * 6), 3));
    s.material.vertexColors = true; s.material.transparent = false; return s;
  }
  const tripLines = coloured(tripMax);
  const trafficLines = coloured(Math.max(L, 1)); // links crossed by tokens so far, off the current trip
  scene3.add(islLines, gslLines, routeLines, trafficLines, tripLines);
  const hiPoints = points(N + G, 9, new Float32Array((N + G) * 3)); // route nodes, shards, the selection
  hiPoints.renderOrder = 2; scene3.add(hiPoints);

  // ---- token counts ----------------------------------------------------
  // What is counted: each generated token crosses every link of every leg of
  // its step's trip once (trip legs: scene.py's trip_legs; an all-reduce leg
  // stands for all of that token's pieces between two ranks), and each
  // request's prompt crosses the client -> rank 0 route once. Replay counts up
  // to the step shown (requests.jsonl's steps), live counts every token so far.
  const tokensAt = new Array(T).fill(0), promptsAt = new Array(T).fill(0);
  if (trip && trip.tokens) trip.tokens.forEach(function (n, j) { tokensAt[j] = n; });
  if (trip && trip.prompts) trip.prompts.forEach(function (n, j) { promptsAt[j] = n; });
  const counted = { version: 0, key: "", links: new Map(), max: 0, tokens: 0, prompts: 0, crossings: 0, node: new Map() };
  const tensorParallel = (scene.ranks || []).some((r) => r.tensor_rank > 0);
  function linkKey(a, b) { return a < b ? a * (N + G) + b : b * (N + G) + a; }
  function nodeLoad(v) { let x = counted.node.get(v); if (!x) { x = { sent: 0, relayed: 0, received: 0 }; counted.node.set(v, x); } return x; }
  function count(k) { // counts up to step k (live: every step), recomputed only when they change
    const upto = scene.mode === "live" ? T - 1 : k, key = upto + "/" + counted.version;
    if (!trip || key === counted.key) return counted;
    counted.key = key; counted.links = new Map(); counted.node = new Map();
    counted.max = 0; counted.tokens = 0; counted.prompts = 0; counted.crossings = 0;
    function cross(g, n, load) {
      for (let i = 0; i + 1 < g.length; i++) {
        const key2 = linkKey(g[i], g[i + 1]), c = (counted.links.get(key2) || 0) + n;
        counted.links.set(key2, c); counted.max = Math.max(counted.max, c); counted.crossings += n;
      }
      if (load && g.length > 1) {
        nodeLoad(g[0]).sent += n; nodeLoad(g[g.length - 1]).received += n;
        for (let i = 1; i + 1 < g.length; i++) nodeLoad(g[i]).relayed += n;
      }
    }
    for (let j = 0; j <= upto; j++) {
      if (tokensAt[j]) { counted.tokens += tokensAt[j]; trip.steps[j].segments.forEach(function (g) { cross(g, tokensAt[j], true); }); }
      if (promptsAt[j]) { counted.prompts += promptsAt[j]; cross(trip.steps[j].prompt || [], promptsAt[j], false); }
    }
    return counted;
  }
  function heat(c, out, o) { // few crossings: dim orange; the most: white
    const f = counted.max > 0 ? Math.sqrt(c / counted.max) : 0;
    out[o] = 1.0; out[o + 1] = 0.45 + 0.55 * f; out[o + 2] = 0.15 + 0.85 * f;
  }
  function linkCounts() { // node names -> crossings, for the console and the tests
    const out = {}; count(stepAt(state.t));
    counted.links.forEach(function (c, key) { const a = Math.floor(key / (N + G)), b = key % (N + G); out[shortNames[a] + " " + shortNames[b]] = c; });
    return out;
  }

  // ---- per-frame state -------------------------------------------------
  let placementNodes = Object.keys(scene.placement).map(Number); // a failover may move a rank (live: "moved")
  function route(k) { const r = scene.routes[state.pair]; return r ? r.steps[k] : null; }
  const drawn = { step: -1, isl: 0, gsl: 0 };
  function updateGlobe(k) {
    satPoints.visible = state.show.satellites;
    satPoints.geometry.attributes.position.needsUpdate = true;
    let ni = 0, ng = 0;
    const ip = islLines.geometry.attributes.position.array, gp = gslLines.geometry.attributes.position.array;
    for (let l = 0; l < L; l++) {
      if (!isUp(k, l)) continue;
      const a = links[2 * l], b = links[2 * l + 1];
      if (isGsl[l]) { nodePos(a, gp, 6 * ng); nodePos(b, gp, 6 * ng + 3); ng++; }
      else { nodePos(a, ip, 6 * ni); nodePos(b, ip, 6 * ni + 3); ni++; }
    }
    islLines.geometry.setDrawRange(0, ni * 2); islLines.geometry.attributes.position.needsUpdate = true;
    gslLines.geometry.setDrawRange(0, ng * 2); gslLines.geometry.attributes.position.needsUpdate = true;
    islLines.visible = state.show.isls; gslLines.visible = state.show.gsls;
    drawn.isl = state.show.isls ? ni : 0; drawn.gsl = state.show.gsls ? ng : 0;
    const r = route(k), rp = routeLines.geometry.attributes.position.array;
    let nr = 0;
    if (r && r.nodes.length > 1) {
      for (let i = 0; i + 1 < r.nodes.length && nr * 6 + 6 <= rp.length; i++, nr++) { nodePos(r.nodes[i], rp, 6 * nr); nodePos(r.nodes[i + 1], rp, 6 * nr + 3); }
    }
    routeLines.geometry.setDrawRange(0, nr * 2); routeLines.geometry.attributes.position.needsUpdate = true;
    const tp = tripLines.geometry.attributes.position.array, tc = tripLines.geometry.attributes.color.array;
    let nt = 0;
    const legs = trip && state.show.trip ? trip.steps[k].segments : [];
    const c = count(k), onTrip = new Set();
    function tripSeg(a, b) { // pink until a token has crossed it, then the traffic colour
      nodePos(a, tp, 6 * nt); nodePos(b, tp, 6 * nt + 3);
      const n = c.links.get(linkKey(a, b)) || 0;
      if (n) { heat(n, tc, 6 * nt); heat(n, tc, 6 * nt + 3); } else { tc.set([1, 0.36, 0.8, 1, 0.36, 0.8], 6 * nt); }
      onTrip.add(linkKey(a, b)); nt++;
    }
    legs.forEach(function (g) { for (let i = 0; i + 1 < g.length; i++) tripSeg(g[i], g[i + 1]); });
    const nLegs = nt; // the marker goes round the token's legs, not the prompt's
    if (trip && state.show.trip) { const g = trip.steps[k].prompt || []; for (let i = 0; i + 1 < g.length; i++) tripSeg(g[i], g[i + 1]); }
    tripLines.geometry.setDrawRange(0, nt * 2); tripLines.geometry.attributes.position.needsUpdate = true;
    tripLines.geometry.attributes.color.needsUpdate = true;
    const fp = trafficLines.geometry.attributes.position.array, fc = trafficLines.geometry.attributes.color.array;
    let nf = 0;
    if (trip && state.show.trip) c.links.forEach(function (n, key) {
      if (onTrip.has(key) || 6 * nf + 6 > fp.length) return;
      nodePos(Math.floor(key / (N + G)), fp, 6 * nf); nodePos(key % (N + G), fp, 6 * nf + 3);
      heat(n, fc, 6 * nf); heat(n, fc, 6 * nf + 3);
      for (let q = 0; q < 6; q++) fc[6 * nf + q] *= 0.6; // off the current trip: dimmer
      nf++;
    });
    trafficLines.geometry.setDrawRange(0, nf * 2); trafficLines.geometry.attributes.position.needsUpdate = true;
    trafficLines.geometry.attributes.color.needsUpdate = true;
    // highlighted nodes: route (yellow), shards (pink), selection (white)
    const hp = hiPoints.geometry.attributes.position.array, hc = hiPoints.geometry.attributes.color.array;
    let nh = 0;
    function hi(v, cr, cg, cb) { nodePos(v, hp, 3 * nh); hc[3 * nh] = cr; hc[3 * nh + 1] = cg; hc[3 * nh + 2] = cb; nh++; }
    if (r) r.nodes.forEach(function (v) { hi(v, 1.0, 0.82, 0.4); });
    placementNodes.forEach(function (v) { hi(v, 1.0, 0.36, 0.8); });
    if (state.selected >= 0) hi(state.selected, 1, 1, 1);
    if (nLegs && tokensAt[k] > 0) { // a token on its way: one lap of the trip every two seconds
      const f = (performance.now() / 2000) % 1, i = Math.min(Math.floor(f * nLegs), nLegs - 1), g = f * nLegs - i;
      for (let c = 0; c < 3; c++) hp[3 * nh + c] = tp[6 * i + c] + (tp[6 * i + 3 + c] - tp[6 * i + c]) * g;
      hc[3 * nh] = 1; hc[3 * nh + 1] = 0.2; hc[3 * nh + 2] = 0.75; nh++;
    }
    hiPoints.geometry.setDrawRange(0, nh);
    hiPoints.geometry.attributes.position.needsUpdate = true; hiPoints.geometry.attributes.color.needsUpdate = true;
  }

  // ---- 2-D map (equirectangular, canvas) -------------------------------
  const map = $("map"), mctx = map.getContext("2d");
  function lonLatOf(p, o) { // from three.js coordinates back to degrees
    const x = p[o], y = -p[o + 2], z = p[o + 1];
    return [Math.atan2(y, x) * 180 / Math.PI, Math.atan2(z, Math.hypot(x, y)) * 180 / Math.PI];
  }
  const tmp = new Float32Array(3);
  const mapRect = { x: 0, y: 0, w: 1, h: 1 }; // equirectangular: 2 wide for 1 high, centred in the stage
  function mapXY(lon, lat) { return [mapRect.x + (lon + 180) / 360 * mapRect.w, mapRect.y + (90 - lat) / 180 * mapRect.h]; }
  function drawMap(k) {
    const X = (lon) => mapRect.x + (lon + 180) / 360 * mapRect.w, Y = (lat) => mapRect.y + (90 - lat) / 180 * mapRect.h;
    mctx.fillStyle = "#05070d"; mctx.fillRect(0, 0, map.width, map.height);
    mctx.fillStyle = "#0b2444"; mctx.fillRect(mapRect.x, mapRect.y, mapRect.w, mapRect.h);
    mctx.strokeStyle = "#9fc5e8"; mctx.lineWidth = 1; mctx.beginPath();
    landRings.forEach(function (ring) {
      for (let i = 0; i < ring.length; i++) {
        const p = ring[i], wraps = i > 0 && Math.abs(p[0] - ring[i - 1][0]) > 180; // rings cut at the date line
        if (i === 0 || wraps) mctx.moveTo(X(p[0]), Y(p[1])); else mctx.lineTo(X(p[0]), Y(p[1]));
      }
    });
    mctx.stroke();
    function seg(a, b, style) {
      nodePos(a, tmp, 0); const pa = lonLatOf(tmp, 0); nodePos(b, tmp, 0); const pb = lonLatOf(tmp, 0);
      if (Math.abs(pa[0] - pb[0]) > 180) return; // would wrap across the whole map
      mctx.moveTo(X(pa[0]), Y(pa[1])); mctx.lineTo(X(pb[0]), Y(pb[1]));
    }
    let ni = 0, ng = 0;
    mctx.lineWidth = 1;
    if (state.show.isls) { mctx.strokeStyle = "rgba(74,163,255,0.45)"; mctx.beginPath(); for (let l = 0; l < L; l++) if (!isGsl[l] && isUp(k, l)) { seg(links[2 * l], links[2 * l + 1]); ni++; } mctx.stroke(); }
    if (state.show.gsls) { mctx.strokeStyle = "rgba(255,159,67,0.8)"; mctx.beginPath(); for (let l = 0; l < L; l++) if (isGsl[l] && isUp(k, l)) { seg(links[2 * l], links[2 * l + 1]); ng++; } mctx.stroke(); }
    drawn.isl = ni; drawn.gsl = ng;
    const r = route(k);
    if (r && r.nodes.length > 1) { mctx.strokeStyle = "#ffd166"; mctx.lineWidth = 2.5; mctx.beginPath(); for (let i = 0; i + 1 < r.nodes.length; i++) seg(r.nodes[i], r.nodes[i + 1]); mctx.stroke(); }
    if (trip && state.show.trip) {
      const c = count(k), rgb = new Float32Array(3);
      function styled(a, b, n, dim) {
        if (n) { heat(n, rgb, 0); mctx.strokeStyle = "rgba(" + (rgb[0] * 255 | 0) + "," + (rgb[1] * 255 | 0) + "," + (rgb[2] * 255 | 0) + "," + (dim ? 0.6 : 1) + ")"; }
        else mctx.strokeStyle = "#ff5ccd";
        mctx.beginPath(); seg(a, b); mctx.stroke();
      }
      const on = new Set(), legs = trip.steps[k].segments.concat([trip.steps[k].prompt || []]);
      legs.forEach(function (g) { for (let i = 0; i + 1 < g.length; i++) on.add(linkKey(g[i], g[i + 1])); });
      mctx.lineWidth = 1.5;
      c.links.forEach(function (n, key) { if (!on.has(key)) styled(Math.floor(key / (N + G)), key % (N + G), n, true); });
      mctx.lineWidth = 2.5;
      legs.forEach(function (g) { for (let i = 0; i + 1 < g.length; i++) styled(g[i], g[i + 1], c.links.get(linkKey(g[i], g[i + 1])) || 0, false); });
    }
    const size = N > 600 ? 2 : 4;
    if (state.show.satellites) {
      for (let i = 0; i < N; i++) {
        const q = lonLatOf(satNow, 3 * i);
        mctx.fillStyle = "rgb(" + (satColors[3 * i] * 255 | 0) + "," + (satColors[3 * i + 1] * 255 | 0) + "," + (satColors[3 * i + 2] * 255 | 0) + ")";
        mctx.fillRect(X(q[0]) - size / 2, Y(q[1]) - size / 2, size, size);
      }
    }
    mctx.fillStyle = "#59f0a8";
    for (let g = 0; g < G; g++) { const q = lonLatOf(stationPos, 3 * g); mctx.fillRect(X(q[0]) - 2, Y(q[1]) - 2, 4, 4); }
    mctx.fillStyle = "#ff5ccd";
    placementNodes.forEach(function (v) { nodePos(v, tmp, 0); const q = lonLatOf(tmp, 0); mctx.fillRect(X(q[0]) - 4, Y(q[1]) - 4, 8, 8); });
    if (state.selected >= 0) { nodePos(state.selected, tmp, 0); const q = lonLatOf(tmp, 0); mctx.strokeStyle = "#fff"; mctx.lineWidth = 2; mctx.strokeRect(X(q[0]) - 6, Y(q[1]) - 6, 12, 12); }
  }

  // ---- charts ----------------------------------------------------------
  function chart(canvasEl, values, opts) {
    const c = canvasEl.getContext("2d"), w = canvasEl.width, h = canvasEl.height, padL = 52, padB = 26, padT = 10;
    c.clearRect(0, 0, w, h);
    const finite = values.filter((v) => v !== null);
    let top = Math.max.apply(null, finite.concat(opts.reference ? [opts.reference] : []).concat([1e-9]));
    top = opts.integer ? 4 * Math.ceil((top + 1) / 4) : top * 1.1; // whole hops on every grid line
    const X = (t) => padL + (w - padL - 8) * (t - times[0]) / tSpan, Y = (v) => padT + (h - padT - padB) * (1 - v / top);
    c.strokeStyle = "#2a3553"; c.fillStyle = "#7d8799"; c.font = "20px system-ui"; c.lineWidth = 1;
    for (let i = 0; i <= 4; i++) { const v = top * i / 4; c.beginPath(); c.moveTo(padL, Y(v)); c.lineTo(w, Y(v)); c.stroke(); c.fillText(opts.fmt(v), 2, Y(v) + 6); }
    c.fillText(times[0].toFixed(0) + " s", padL, h - 4); c.fillText(times[T - 1].toFixed(0) + " s", w - 80, h - 4);
    const r = scene.routes[state.pair];
    if (r) { c.strokeStyle = "rgba(255,92,205,0.7)"; r.changes.forEach(function (k) { c.beginPath(); c.moveTo(X(times[k]), h - padB); c.lineTo(X(times[k]), h - padB - 12); c.stroke(); }); }
    if (opts.reference) { c.setLineDash([8, 6]); c.strokeStyle = "#59f0a8"; c.beginPath(); c.moveTo(padL, Y(opts.reference)); c.lineTo(w, Y(opts.reference)); c.stroke(); c.setLineDash([]); }
    c.strokeStyle = "#ffd166"; c.lineWidth = 2.5; c.beginPath();
    let pen = false;
    values.forEach(function (v, k) { if (v === null) { pen = false; return; } if (pen) c.lineTo(X(times[k]), Y(v)); else c.moveTo(X(times[k]), Y(v)); pen = true; });
    c.stroke();
    canvasEl._x = X;
  }
  function drawCharts() {
    const r = scene.routes[state.pair];
    const rtt = r ? r.steps.map((s) => (s.rtt_s === null ? null : s.rtt_s * 1e3)) : [];
    chart($("rttchart"), rtt, { fmt: (v) => v.toFixed(0) + " ms", reference: r && r.fibre_rtt_s ? r.fibre_rtt_s * 1e3 : null });
    chart($("hopchart"), r ? r.steps.map((s) => s.hops) : [], { fmt: (v) => v.toFixed(0), integer: true });
    const base = [$("rttchart"), $("hopchart")];
    base.forEach(function (cv) { cv._base = cv.getContext("2d").getImageData(0, 0, cv.width, cv.height); });
  }
  function cursor(t) {
    [$("rttchart"), $("hopchart")].forEach(function (cv) {
      if (!cv._base) return;
      const c = cv.getContext("2d"); c.putImageData(cv._base, 0, 0);
      c.strokeStyle = "#fff"; c.lineWidth = 1; c.beginPath(); c.moveTo(cv._x(t), 0); c.lineTo(cv._x(t), cv.height - 26); c.stroke();
    });
  }
  [$("rttchart"), $("hopchart")].forEach(function (cv) {
    cv.onclick = function (e) {
      if (scene.mode === "live") return;
      const b = cv.getBoundingClientRect(), x = (e.clientX - b.left) * cv.width / b.width;
      state.t = Math.min(Math.max(times[0] + (x - 52) / (cv.width - 60) * tSpan, times[0]), times[T - 1]); state.playing = false;
    };
  });

  // ---- panels ----------------------------------------------------------
  function ms(s) { return (s * 1e3).toFixed(1) + " ms"; }
  function plural(n, what) { return n + " " + what + (n === 1 ? "" : "s"); }
  function updatePanels(k) {
    const r = scene.routes[state.pair], s = route(k);
    if (s && s.rtt_s !== null) {
      $("rtt").textContent = "RTT " + ms(s.rtt_s);
      $("hops").textContent = s.hops + " hops" + (r.changes.indexOf(k) >= 0 ? " (route changed at this step)" : "");
      $("path").textContent = s.nodes.map((v) => shortNames[v]).join(" > ");
    } else { $("rtt").textContent = r ? "no path" : "-"; $("hops").textContent = ""; $("path").textContent = ""; }
    $("fibre").textContent = r && r.fibre_rtt_s ? "fibre over the " + (r.great_circle_m / 1e3).toFixed(0) + " km great circle at 2/3 c: RTT " + ms(r.fibre_rtt_s) : (r ? "one end is a satellite: no fibre to compare" : "");
    if (trip) {
      const st = trip.steps[k], c = count(k), counting = trip.tokens || scene.mode === "live";
      const top = Array.from(c.links.entries()).sort((a, b) => b[1] - a[1]).slice(0, 6).map(function (e) {
        return "<tr><td>" + shortNames[Math.floor(e[0] / (N + G))] + " - " + shortNames[e[0] % (N + G)] + "</td><td>" + e[1] + "</td></tr>";
      });
      $("tokens").innerHTML = (counting ? "<span class='big'>" + c.tokens + "</span> tokens" + (scene.mode === "live" ? "" : " up to this step") +
          ", " + plural(c.prompts, "prompt") + "; " + plural(c.crossings, "link crossing") + " on " + plural(c.links.size, "link") +
          (scene.mode === "live" ? "" : "<br>tokens at this step: " + tokensAt[k]) : "") +
        "<br>legs: " + trip.legs.join("; ") + "; prompt: client -> stage 0<br>" +
        (st.one_way_s !== null ? "a token's trip now: " + ms(st.one_way_s) + " of propagation" : "a leg has no path now") +
        (top.length ? "<table><tr><td>busiest links</td><td>crossings</td></tr>" + top.join("") + "</table>" : "") +
        (state.lost ? "<br>lost ranks: " + state.lost.map((d) => d.ranks.map((r) => "rank " + r + " (" + (d.nodes || [])[r] + ")").join(", ") + " at step " + d.step).join("; ") +
          (state.moved ? "; ranks now on " + state.moved.join(" ") + " (counts follow the first placement)" : "") : "");
    }
    $("counts").textContent = N + " satellites, " + G + " stations; now " + drawn.isl + " ISLs, " + drawn.gsl + " GSLs drawn";
    if (state.selected >= 0) showNode(state.selected, k);
  }
  function showNode(v, k) {
    const rows = [];
    const pv = new Float32Array(3), pu = new Float32Array(3);
    for (let l = 0; l < L; l++) {
      if (!isUp(k, l)) continue;
      const a = links[2 * l], b = links[2 * l + 1];
      if (a !== v && b !== v) continue;
      const u = a === v ? b : a;
      nodePos(v, pv, 0); nodePos(u, pu, 0);
      const d_m = Math.hypot(pv[0] - pu[0], pv[1] - pu[1], pv[2] - pu[2]) * EARTH_RADIUS_M;
      rows.push("<tr><td>" + (isGsl[l] ? "GSL" : "ISL") + "</td><td>" + shortNames[u] + "</td><td>" + (d_m / 1e3).toFixed(0) + " km</td><td>" + ms(d_m / 299792458.0) + "</td></tr>");
    }
    const shards = (scene.ranks || []).filter((r) => r.node === v).map(function (r) {
      return "rank " + r.rank + ": stage " + r.stage + (tensorParallel ? ", tensor rank " + r.tensor_rank : "") +
        (r.layers ? (r.layers[1] - r.layers[0] === 1 ? ", layer " + r.layers[0] : ", layers " + r.layers[0] + "-" + (r.layers[1] - 1)) : "");
    });
    const c = count(k), load = c.node.get(v) || { sent: 0, relayed: 0, received: 0 };
    const trips = load.received + load.relayed; // token trips that passed through v (as scene.py's legs, counted per leg)
    const counting = trip && (trip.tokens || scene.mode === "live");
    $("satinfo").innerHTML = "<b>" + shortNames[v] + "</b> " + (names[v] !== shortNames[v] ? "(" + names[v] + ")" : "") +
      (shards.length ? "<div style='color:#ff5ccd'>runs " + shards.join("; ") + "</div>" : (scene.placement && Object.keys(scene.placement).length ? "<div>runs no shard</div>" : "")) +
      (v === scene.client_id ? "<div>the client</div>" : "") +
      (counting && shards.length ? "<div>tokens processed so far: " + c.tokens + " (every token passes every rank)</div>" : "") +
      (counting ? "<div>activations sent " + load.sent + ", relayed " + load.relayed + ", received " + load.received + " (one per token per leg)</div>" +
                  "<div>token trips through here so far: " + trips + "</div>" : "") +
      "<div>" + rows.length + " links up (length from the positions; one-way delay at c)</div><table>" + rows.join("") + "</table>";
    body.dataset.selected = shortNames[v];
  }
  scene.client_id = scene.client ? shortNames.indexOf(scene.client) : -1;
  function hiddenByEarth(p) { // does the line of sight from the camera meet the globe before p?
    const c = camera.position, dx = p[0] - c.x, dy = p[1] - c.y, dz = p[2] - c.z, len = Math.hypot(dx, dy, dz);
    const ux = dx / len, uy = dy / len, uz = dz / len, bq = c.x * ux + c.y * uy + c.z * uz;
    const disc = bq * bq - (c.lengthSq() - 1);
    return disc > 0 && -bq - Math.sqrt(disc) < len - 1e-3;
  }
  function pick(e) { // nearest node on screen within a few pixels, not hidden behind the Earth
    const b = (state.view === "globe" ? canvas : map).getBoundingClientRect();
    const mx = e.clientX - b.left, my = e.clientY - b.top;
    let best = -1, bestD = 12 * 12;
    const v3 = new THREE.Vector3();
    for (let v = 0; v < N + G; v++) {
      if (v < N && !state.show.satellites) continue;
      nodePos(v, tmp, 0);
      let x, y;
      if (state.view === "globe") {
        if (hiddenByEarth(tmp)) continue;
        v3.set(tmp[0], tmp[1], tmp[2]).project(camera);
        x = (v3.x + 1) / 2 * b.width; y = (1 - v3.y) / 2 * b.height;
      } else { const q = lonLatOf(tmp, 0), m = mapXY(q[0], q[1]); x = m[0] * b.width / map.width; y = m[1] * b.height / map.height; }
      const d = (x - mx) * (x - mx) + (y - my) * (y - my);
      if (d < bestD) { bestD = d; best = v; }
    }
    state.selected = best;
    if (best < 0) { $("satinfo").textContent = "click a satellite (or a station)"; delete body.dataset.selected; }
  }
  let down = null;
  function onDown(e) { down = [e.clientX, e.clientY]; }
  function onUp(e) { if (down && Math.hypot(e.clientX - down[0], e.clientY - down[1]) < 4) pick(e); down = null; }
  canvas.addEventListener("pointerdown", onDown); canvas.addEventListener("pointerup", onUp);
  map.addEventListener("pointerdown", onDown); map.addEventListener("pointerup", onUp);

  // ---- layout and loop -------------------------------------------------
  function layout() {
    const st = $("stage"), w = st.clientWidth, h = st.clientHeight;
    canvas.style.display = state.view === "globe" && renderer ? "block" : "none";
    map.style.display = state.view === "map" || !renderer ? "block" : "none";
    if (renderer) { renderer.setSize(w, h, false); camera.aspect = w / Math.max(h, 1); camera.updateProjectionMatrix(); }
    map.width = w; map.height = h;
    mapRect.w = Math.min(w, 2 * h); mapRect.h = mapRect.w / 2; mapRect.x = (w - mapRect.w) / 2; mapRect.y = (h - mapRect.h) / 2;
    $("toggle").textContent = state.view === "globe" ? "2-D map" : "3-D globe";
    body.dataset.view = state.view;
  }
  window.addEventListener("resize", layout);
  if (trip) $("tokens-panel").style.display = "block";
  layout(); drawCharts();

  const perf = { work: [], interval: [], last: 0, shown: 0 };
  const finish = hash.get("finish") === "1"; // measuring: wait for the GPU too, so frame time includes it
  const gl = renderer ? renderer.getContext() : null;
  function mean(a) { return a.reduce((x, y) => x + y, 0) / Math.max(a.length, 1); }
  let lastNow = performance.now();
  function frame(now) {
    const dt_s = Math.min((now - lastNow) / 1000, 0.25); lastNow = now;
    const t0 = performance.now();
    if (state.playing) {
      state.t += dt_s * state.speed;
      if (state.t >= times[T - 1]) { state.t = times[T - 1]; state.playing = false; }
    } else if (scene.mode === "live" && state.liveStep >= 0 && !state.liveEnded) {
      // between two applied steps, move on at the player's pace, never past the next step
      const kNext = state.liveStep + 1;
      const limit = kNext < T ? times[kNext] - 1e-3 * (times[kNext] - times[state.liveStep]) : times[T - 1];
      state.t = Math.min(state.t + dt_s * state.liveScale, limit);
    }
    const k = positionsAt(state.t);
    if (state.view === "globe" && renderer) { updateGlobe(k); controls.update(); renderer.render(scene3, camera); if (finish) gl.finish(); }
    else drawMap(k);
    cursor(state.t);
    if (now - perf.shown > 250) updatePanels(k);
    const work_ms = performance.now() - t0;
    perf.work.push(work_ms); if (perf.work.length > 120) perf.work.shift();
    if (perf.last) { perf.interval.push(now - perf.last); if (perf.interval.length > 120) perf.interval.shift(); }
    perf.last = now;
    $("play").textContent = scene.mode === "live" ? "Live" : (state.playing ? "Pause" : "Play");
    $("slider").value = String(Math.round((state.t - times[0]) / tSpan * 1000));
    $("clock").textContent = "t = " + state.t.toFixed(1) + " s (step " + k + "/" + (T - 1) + ")";
    if (now - perf.shown > 250) {
      perf.shown = now;
      const fps = 1000 / Math.max(mean(perf.interval), 1e-3);
      $("perf").textContent = "work " + mean(perf.work).toFixed(2) + " ms a frame, " + fps.toFixed(0) + " frames/s" + (finish ? " (GPU included)" : "");
      body.dataset.frameMs = mean(perf.work).toFixed(3);
      body.dataset.frameIntervalMs = mean(perf.interval).toFixed(3);
      body.dataset.frames = String(perf.work.length);
    }
    const r = route(k);
    body.dataset.satellites = String(state.show.satellites ? N : 0);
    body.dataset.stations = String(G);
    body.dataset.isls = String(drawn.isl);
    body.dataset.gsls = String(drawn.gsl);
    body.dataset.step = String(k);
    body.dataset.timeS = String(times[k]); // the step whose links are drawn
    body.dataset.clockS = state.t.toFixed(3); // positions are interpolated to here
    body.dataset.route = r ? r.nodes.map((v) => shortNames[v]).join(" ") : "";
    body.dataset.rttMs = r && r.rtt_s !== null ? (r.rtt_s * 1e3).toFixed(3) : "";
    if (trip) {
      body.dataset.trip = trip.steps[k].segments.map((g) => g.map((v) => shortNames[v]).join(" ")).join(" | ");
      const c = count(k);
      body.dataset.tokens = trip.tokens || scene.mode === "live" ? String(c.tokens) : ""; // counted so far
      body.dataset.prompts = String(c.prompts);
      body.dataset.linkCrossings = String(c.crossings);
      body.dataset.linksUsed = String(c.links.size);
    }
    if (state.liveStep >= 0) { // written with the step drawn, so the two are always read together
      body.dataset.liveStep = String(state.liveStep); body.dataset.applyMs = state.liveApplyMs.toFixed(3);
      if (state.liveEnded) body.dataset.liveEnded = "1";
    }
    body.dataset.ready = "1";
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);

  // ---- live: follow the player's applied steps -------------------------
  if (scene.mode === "live" && window.EventSource) {
    const events = new EventSource(scene.events_url || "events");
    events.addEventListener("hello", function (e) {
      const d = JSON.parse(e.data); state.liveScale = d.time_scale || 1;
      // a (re)connected stream sends every token again: count from nothing
      tokensAt.fill(0); promptsAt.fill(0); counted.version += 1; state.lost = null; state.requestsDone = 0;
    });
    // meshemu run: the client's tokens (with the step in force when each arrived) and the shards' layers
    events.addEventListener("token", function (e) {
      const d = JSON.parse(e.data);
      if (!(d.step >= 0 && d.step < T)) return;
      tokensAt[d.step] += 1; if (d.index === 0) promptsAt[d.step] += 1;
      counted.version += 1;
    });
    events.addEventListener("loaded", function (e) {
      const d = JSON.parse(e.data);
      (d.replies || []).forEach(function (r) { const x = (scene.ranks || [])[r.rank]; if (x) x.layers = r.layers; });
    });
    events.addEventListener("request", function (e) { state.requestsDone = (state.requestsDone || 0) + 1; body.dataset.requests = String(state.requestsDone); });
    events.addEventListener("lost", function (e) { // the client lost ranks; the deployment replaces them (or waits)
      const d = JSON.parse(e.data);
      state.lost = (state.lost || []).concat([d]); body.dataset.lost = String(state.lost.length);
    });
    events.addEventListener("moved", function (e) { // where the ranks ended up, as the shards said at the end
      const d = JSON.parse(e.data);
      (d.rank_nodes || []).forEach(function (name, r) { const x = (scene.ranks || [])[r], v = shortNames.indexOf(name); if (x && v >= 0) x.node = v; });
      placementNodes = (scene.ranks || []).map((r) => r.node);
      state.moved = d.rank_nodes;
    });
    events.addEventListener("failed", function (e) { // the client reported an error: the run stops
      const d = JSON.parse(e.data); body.dataset.failed = d.message; $("mode").textContent = "live, failed: " + d.message;
    });
    events.addEventListener("next", function () { events.close(); location.reload(); }); // the next experiment's page is up
    events.addEventListener("step", function (e) {
      const d = JSON.parse(e.data);
      state.liveStep = d.step; state.t = times[d.step]; state.liveApplyMs = d.apply_ms;
    });
    events.addEventListener("end", function () { // the player stopped: show its last step, do not move on
      state.liveEnded = true; if (state.liveStep >= 0) state.t = times[state.liveStep]; events.close();
    });
  }
  function screenOf(v) { // where node v is drawn, in CSS pixels of the page (null: hidden behind the Earth)
    nodePos(v, tmp, 0);
    const st = $("stage").getBoundingClientRect();
    if (state.view === "map") { const q = lonLatOf(tmp, 0), m = mapXY(q[0], q[1]); return [st.left + m[0] * st.width / map.width, st.top + m[1] * st.height / map.height]; }
    if (hiddenByEarth(tmp)) return null;
    const p = new THREE.Vector3(tmp[0], tmp[1], tmp[2]).project(camera);
    return [st.left + (p.x + 1) / 2 * st.width, st.top + (1 - p.y) / 2 * st.height];
  }
  window.meshemuView = { state: state, scene: scene, screenOf: screenOf, linkCounts: linkCounts }; // for the console and the tests
})();
