// A small WebGL viewer for part meshes (no dependencies, written for holopart-infer).
// Parts arrive as base64 float32 positions and uint32 triangle indices; each part is
// drawn flat-shaded in its colour with two-sided lighting (input patches are open).
// Several viewers can share one camera, so the input and the result turn together.
"use strict";

const HoloViewer = (() => {
  function b64ToBuffer(b64) {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out.buffer;
  }

  // column-major 4x4 helpers
  function perspective(fovy, aspect, near, far) {
    const f = 1 / Math.tan(fovy / 2), nf = 1 / (near - far);
    return [f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) * nf, -1, 0, 0, 2 * far * near * nf, 0];
  }
  function multiply(a, b) {
    const o = new Array(16).fill(0);
    for (let c = 0; c < 4; c++)
      for (let r = 0; r < 4; r++)
        for (let k = 0; k < 4; k++) o[c * 4 + r] += a[k * 4 + r] * b[c * 4 + k];
    return o;
  }
  function sub(a, b) { return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]; }
  function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
  function normalize(a) { const l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; }
  function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
  function lookAt(eye, target, up) {
    const z = normalize(sub(eye, target)), x = normalize(cross(up, z)), y = cross(z, x);
    return [x[0], y[0], z[0], 0, x[1], y[1], z[1], 0, x[2], y[2], z[2], 0, -dot(x, eye), -dot(y, eye), -dot(z, eye), 1];
  }

  const VS = `
    attribute vec3 aPos; attribute vec3 aNrm;
    uniform mat4 uMVP; uniform mat3 uNrmMat;
    varying vec3 vN;
    void main() { gl_Position = uMVP * vec4(aPos, 1.0); vN = uNrmMat * aNrm; }`;
  const FS = `
    precision mediump float;
    uniform vec3 uColor; varying vec3 vN;
    void main() {
      vec3 n = normalize(vN);
      if (!gl_FrontFacing) n = -n;
      float key = max(dot(n, normalize(vec3(0.35, 0.55, 0.75))), 0.0);
      float fill = max(dot(n, normalize(vec3(-0.6, 0.1, 0.4))), 0.0);
      gl_FragColor = vec4(uColor * (0.38 + 0.55 * key + 0.2 * fill), 1.0);
    }`;

  /** A camera shared by viewers: orbit angles and distance around a centre. */
  class Camera {
    constructor() { this.yaw = 0.6; this.pitch = 0.45; this.center = [0, 0, 0]; this.radius = 1; this.zoom = 1; this.viewers = []; }
    fit(bounds) {
      const [lo, hi] = bounds;
      this.center = [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2];
      this.radius = Math.max(1e-6, Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) / 2);
      this.redraw();
    }
    redraw() { for (const v of this.viewers) v.draw(); }
    eye() {
      const d = this.zoom * this.radius / Math.sin(Math.PI * 35 / 360) * 1.05, c = this.center;
      return [c[0] + d * Math.cos(this.pitch) * Math.sin(this.yaw), c[1] + d * Math.sin(this.pitch),
              c[2] + d * Math.cos(this.pitch) * Math.cos(this.yaw)];
    }
  }

  class Viewer {
    constructor(canvas, camera) {
      this.canvas = canvas;
      this.camera = camera;
      camera.viewers.push(this);
      const gl = canvas.getContext("webgl", { antialias: true, preserveDrawingBuffer: true });
      if (!gl) throw new Error("WebGL is not available in this browser");
      this.gl = gl;
      this.program = this.link(VS, FS);
      this.parts = [];
      let drag = null;
      canvas.addEventListener("mousedown", (e) => { drag = [e.clientX, e.clientY]; e.preventDefault(); });
      window.addEventListener("mouseup", () => { drag = null; });
      window.addEventListener("mousemove", (e) => {
        if (!drag) return;
        camera.yaw -= (e.clientX - drag[0]) * 0.01;
        camera.pitch = Math.max(-1.5, Math.min(1.5, camera.pitch + (e.clientY - drag[1]) * 0.01));
        drag = [e.clientX, e.clientY];
        camera.redraw();
      });
      canvas.addEventListener("wheel", (e) => {
        camera.zoom = Math.max(0.2, Math.min(5, camera.zoom * Math.exp(e.deltaY * 0.001)));
        camera.redraw();
        e.preventDefault();
      }, { passive: false });
    }
    link(vs, fs) {
      const gl = this.gl;
      const compile = (type, src) => {
        const s = gl.createShader(type);
        gl.shaderSource(s, src);
        gl.compileShader(s);
        if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
        return s;
      };
      const p = gl.createProgram();
      gl.attachShader(p, compile(gl.VERTEX_SHADER, vs));
      gl.attachShader(p, compile(gl.FRAGMENT_SHADER, fs));
      gl.linkProgram(p);
      if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
      return p;
    }
    /** parts: [{name, color: [r,g,b] 0..255, positions: base64 f32, indices: base64 u32}] */
    setParts(parts) {
      const gl = this.gl;
      for (const p of this.parts) { gl.deleteBuffer(p.pos); gl.deleteBuffer(p.nrm); }
      this.parts = [];
      for (const part of parts) {
        const v = new Float32Array(b64ToBuffer(part.positions));
        const f = new Uint32Array(b64ToBuffer(part.indices));
        // unshared vertices with face normals: flat shading, no index buffer limits
        const pos = new Float32Array(f.length * 3), nrm = new Float32Array(f.length * 3);
        for (let t = 0; t < f.length; t += 3) {
          const a = f[t] * 3, b = f[t + 1] * 3, c = f[t + 2] * 3;
          const e1 = [v[b] - v[a], v[b + 1] - v[a + 1], v[b + 2] - v[a + 2]];
          const e2 = [v[c] - v[a], v[c + 1] - v[a + 1], v[c + 2] - v[a + 2]];
          const n = normalize(cross(e1, e2));
          for (let k = 0; k < 3; k++) {
            const src = f[t + k] * 3, dst = (t + k) * 3;
            pos[dst] = v[src]; pos[dst + 1] = v[src + 1]; pos[dst + 2] = v[src + 2];
            nrm[dst] = n[0]; nrm[dst + 1] = n[1]; nrm[dst + 2] = n[2];
          }
        }
        const pb = gl.createBuffer();
        gl.bindBuffer(gl.ARRAY_BUFFER, pb);
        gl.bufferData(gl.ARRAY_BUFFER, pos, gl.STATIC_DRAW);
        const nb = gl.createBuffer();
        gl.bindBuffer(gl.ARRAY_BUFFER, nb);
        gl.bufferData(gl.ARRAY_BUFFER, nrm, gl.STATIC_DRAW);
        this.parts.push({ name: part.name, color: part.color.map((x) => x / 255), pos: pb, nrm: nb, count: f.length,
                          positions: v });
      }
      this.draw();
    }
    bounds() {
      let lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
      for (const p of this.parts)
        for (let i = 0; i < p.positions.length; i += 3)
          for (let k = 0; k < 3; k++) {
            lo[k] = Math.min(lo[k], p.positions[i + k]);
            hi[k] = Math.max(hi[k], p.positions[i + k]);
          }
      return lo[0] <= hi[0] ? [lo, hi] : null;
    }
    draw() {
      const gl = this.gl, cam = this.camera, cv = this.canvas;
      const w = cv.clientWidth || cv.width, h = cv.clientHeight || cv.height;
      if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
      gl.viewport(0, 0, cv.width, cv.height);
      gl.clearColor(0.96, 0.96, 0.96, 1);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      if (!this.parts.length) return;
      gl.enable(gl.DEPTH_TEST);
      gl.useProgram(this.program);
      const eye = cam.eye();
      const view = lookAt(eye, cam.center, [0, 1, 0]);
      const dist = Math.hypot(...sub(eye, cam.center));
      const proj = perspective(Math.PI * 35 / 180, cv.width / cv.height, Math.max(1e-4, dist - 3 * cam.radius),
                               dist + 3 * cam.radius);
      const mvp = multiply(proj, view);
      const nrmMat = [view[0], view[1], view[2], view[4], view[5], view[6], view[8], view[9], view[10]];
      const loc = (n) => gl.getUniformLocation(this.program, n);
      gl.uniformMatrix4fv(loc("uMVP"), false, new Float32Array(mvp));
      gl.uniformMatrix3fv(loc("uNrmMat"), false, new Float32Array(nrmMat));
      const aPos = gl.getAttribLocation(this.program, "aPos"), aNrm = gl.getAttribLocation(this.program, "aNrm");
      for (const p of this.parts) {
        gl.uniform3fv(loc("uColor"), p.color);
        gl.bindBuffer(gl.ARRAY_BUFFER, p.pos);
        gl.enableVertexAttribArray(aPos);
        gl.vertexAttribPointer(aPos, 3, gl.FLOAT, false, 0, 0);
        gl.bindBuffer(gl.ARRAY_BUFFER, p.nrm);
        gl.enableVertexAttribArray(aNrm);
        gl.vertexAttribPointer(aNrm, 3, gl.FLOAT, false, 0, 0);
        gl.drawArrays(gl.TRIANGLES, 0, p.count);
      }
    }
  }

  return { Camera, Viewer };
})();
