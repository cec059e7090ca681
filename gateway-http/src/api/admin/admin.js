// The admin page's script: signs in, polls the JSON API every 2 s and renders what it answers.
// Everything shown comes from the same API (and the same authorization) other clients use; data
// is written with textContent only, never as HTML.
"use strict";

(function () {
  const POLL_MS = 2000;
  const TOKEN_KEY = "eg-admin-token";
  const base = document.body.dataset.base || "/";
  const $ = (id) => document.getElementById(id);

  let token = null;
  let kernels = [];
  let specs = null;
  let sortKey = "created";
  let sortAsc = false;
  let timer = null;
  let pendingAction = null;

  // A token in the page URL is taken once, then removed from the address bar and history.
  function takeUrlToken() {
    const url = new URL(window.location.href);
    const fromUrl = url.searchParams.get("token");
    if (fromUrl) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
      url.searchParams.delete("token");
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
    token = sessionStorage.getItem(TOKEN_KEY);
  }

  // A JWT (an OIDC issuer's) goes as a bearer token, anything else with EG's `token` scheme
  // (the shared token, a token-file token; JupyterHub accepts either).
  const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

  async function api(method, path) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = (JWT_SHAPE.test(token) ? "Bearer " : "token ") + token;
    const response = await fetch(base + path, { method, headers, credentials: "same-origin", cache: "no-store" });
    if (!response.ok) {
      let reason = response.statusText;
      try {
        const body = await response.json();
        reason = body.message || body.reason || reason;
      } catch (_) { /* not JSON */ }
      const error = new Error(reason);
      error.status = response.status;
      throw error;
    }
    return response.status === 204 ? null : response.json();
  }

  function show(which) {
    for (const id of ["loading", "signin", "forbidden", "dashboard"]) {
      $(id).hidden = id !== which;
    }
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    if (timer) clearInterval(timer);
    timer = null;
    $("who").hidden = true;
    $("token").value = "";
    show("signin");
  }

  async function start() {
    let me;
    try {
      me = await api("GET", "api/me");
    } catch (error) {
      show("signin");
      if (token && error.status === 401) {
        $("signin-error").textContent = "This token was not accepted: " + error.message;
        $("signin-error").hidden = false;
      }
      return;
    }
    $("signin-error").hidden = true;
    const user = me.identity.username;
    $("who-name").textContent = user;
    $("who").hidden = false;
    if (!me.roles.includes("admin")) {
      $("forbidden-user").textContent = user;
      show("forbidden");
      return;
    }
    show("dashboard");
    await refresh();
    if (!timer) timer = setInterval(refresh, POLL_MS);
  }

  async function refresh() {
    try {
      const [list, specList] = await Promise.all([
        api("GET", "api/admin/kernels"),
        api("GET", "api/kernelspecs"),
      ]);
      kernels = list;
      specs = specList;
      render();
      $("updated").textContent = "Updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (error.status === 401) {
        signOut();
      } else if (error.status === 403) {
        show("forbidden");
      } else {
        $("updated").textContent = "Update failed: " + error.message;
      }
    }
  }

  function seconds(iso) {
    const at = Date.parse(iso);
    return Number.isNaN(at) ? 0 : Math.max(0, (Date.now() - at) / 1000);
  }

  function duration(total) {
    const s = Math.floor(total);
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + (s % 60) + "s";
    const h = Math.floor(m / 60);
    if (h < 24) return h + "h " + (m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function button(label, className, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.className = className;
    b.addEventListener("click", onClick);
    return b;
  }

  function matches(kernel, text, state) {
    if (state && kernel.execution_state !== state) return false;
    if (!text) return true;
    const haystack = [kernel.id, kernel.owner, kernel.name, kernel.backend, kernel.host, kernel.execution_state]
      .join(" ")
      .toLowerCase();
    return text
      .toLowerCase()
      .split(/\s+/)
      .filter(Boolean)
      .every((word) => haystack.includes(word));
  }

  function compare(a, b) {
    let x = a[sortKey];
    let y = b[sortKey];
    if (sortKey === "created" || sortKey === "last_activity") {
      x = Date.parse(x);
      y = Date.parse(y);
    }
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return sortAsc ? order : -order;
  }

  function render() {
    const text = $("filter").value.trim();
    const state = $("state-filter").value;
    const shown = kernels.filter((k) => matches(k, text, state)).sort(compare);
    const body = $("kernels").tBodies[0];
    const rows = shown.map((k) => {
      const tr = document.createElement("tr");
      tr.dataset.kernelId = k.id;
      const id = cell(k.id.slice(0, 8), "mono");
      id.title = k.id;
      tr.append(id, cell(k.owner), cell(k.name), cell(k.backend), cell(k.host || "—", "mono"));
      const stateCell = document.createElement("td");
      const badge = document.createElement("span");
      badge.className = "badge state-" + k.execution_state;
      badge.textContent = k.execution_state;
      stateCell.append(badge);
      if (k.reason) stateCell.title = k.reason;
      tr.append(stateCell);
      tr.append(cell(duration(seconds(k.created)), "num"));
      tr.append(cell(duration(seconds(k.last_activity)) + " ago", "num"));
      tr.append(cell(String(k.connections), "num"));
      tr.append(cell(String(k.restarts), "num"));
      const actions = document.createElement("td");
      actions.className = "actions";
      actions.append(
        button("Interrupt", "small", () => confirmAction(k, "interrupt")),
        button("Restart", "small", () => confirmAction(k, "restart")),
        button("Shut down", "small danger", () => confirmAction(k, "shutdown")),
      );
      tr.append(actions);
      return tr;
    });
    body.replaceChildren(...rows);
    $("empty").hidden = shown.length > 0;
    $("empty").textContent = kernels.length ? "No kernel matches the filter." : "No kernels are running.";
    for (const th of document.querySelectorAll("#kernels th[data-key]")) {
      th.classList.toggle("sorted", th.dataset.key === sortKey);
      th.classList.toggle("asc", th.dataset.key === sortKey && sortAsc);
    }
    $("stat-kernels").textContent = kernels.length;
    $("stat-busy").textContent = kernels.filter((k) => k.execution_state === "busy").length;
    $("stat-idle").textContent = kernels.filter((k) => k.execution_state === "idle").length;
    $("stat-connections").textContent = kernels.reduce((n, k) => n + k.connections, 0);
    $("stat-users").textContent = new Set(kernels.map((k) => k.owner)).size;
    renderSpecs();
  }

  function runsOn(spec) {
    const metadata = spec.spec.metadata || {};
    const proxy = metadata.process_proxy && metadata.process_proxy.class_name;
    const provisioner = metadata.kernel_provisioner && metadata.kernel_provisioner.provisioner_name;
    const name = proxy || provisioner;
    return name ? String(name).split(".").pop() : "local";
  }

  function renderSpecs() {
    if (!specs) return;
    const body = $("specs").tBodies[0];
    const names = Object.keys(specs.kernelspecs).sort();
    body.replaceChildren(
      ...names.map((name) => {
        const spec = specs.kernelspecs[name];
        const tr = document.createElement("tr");
        const nameCell = cell(name, "mono");
        if (name === specs.default) {
          const tag = document.createElement("span");
          tag.className = "badge neutral";
          tag.textContent = "default";
          nameCell.append(" ", tag);
        }
        tr.append(nameCell, cell(spec.spec.display_name), cell(spec.spec.language), cell(runsOn(spec)));
        tr.append(cell(String(kernels.filter((k) => k.name === name).length), "num"));
        const availability = document.createElement("td");
        const badge = document.createElement("span");
        badge.className = spec.unavailable ? "badge state-dead" : "badge state-idle";
        badge.textContent = spec.unavailable ? "unavailable" : "available";
        availability.append(badge);
        if (spec.unavailable) {
          const why = document.createElement("span");
          why.className = "muted why";
          why.textContent = spec.unavailable;
          availability.append(" ", why);
        }
        tr.append(availability);
        return tr;
      }),
    );
  }

  const ACTIONS = {
    interrupt: { title: "Interrupt kernel", verb: "Interrupt", done: "interrupted", method: "POST", path: (id) => "api/kernels/" + id + "/interrupt" },
    restart: { title: "Restart kernel", verb: "Restart", done: "restarted", method: "POST", path: (id) => "api/kernels/" + id + "/restart" },
    shutdown: { title: "Shut down kernel", verb: "Shut down", done: "shut down", method: "DELETE", path: (id) => "api/kernels/" + id },
  };

  function confirmAction(kernel, action) {
    const spec = ACTIONS[action];
    pendingAction = { kernel, action };
    $("confirm-title").textContent = spec.title + "?";
    $("confirm-text").textContent =
      spec.verb + " the " + kernel.name + " kernel " + kernel.id + " of " + kernel.owner + "?";
    $("confirm-ok").textContent = spec.verb;
    $("confirm-ok").className = action === "shutdown" ? "danger" : "primary";
    $("confirm").showModal();
  }

  function toast(text, failed) {
    const t = $("toast");
    t.textContent = text;
    t.className = failed ? "failed" : "";
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (t.hidden = true), 4000);
  }

  async function runPending() {
    $("confirm").close();
    const pending = pendingAction;
    pendingAction = null;
    if (!pending) return;
    const spec = ACTIONS[pending.action];
    try {
      await api(spec.method, spec.path(pending.kernel.id));
      toast("Kernel " + pending.kernel.id.slice(0, 8) + " " + spec.done);
    } catch (error) {
      toast(spec.verb + " failed: " + error.message, true);
    }
    await refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    takeUrlToken();
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      token = $("token").value.trim();
      sessionStorage.setItem(TOKEN_KEY, token);
      start();
    });
    $("sign-out").addEventListener("click", signOut);
    $("forbidden-sign-out").addEventListener("click", signOut);
    $("filter").addEventListener("input", render);
    $("state-filter").addEventListener("change", render);
    $("confirm-cancel").addEventListener("click", () => {
      pendingAction = null;
      $("confirm").close();
    });
    $("confirm-ok").addEventListener("click", runPending);
    for (const th of document.querySelectorAll("#kernels th[data-key]")) {
      th.addEventListener("click", () => {
        if (sortKey === th.dataset.key) {
          sortAsc = !sortAsc;
        } else {
          sortKey = th.dataset.key;
          sortAsc = true;
        }
        render();
      });
    }
    start();
  });
})();
