// The live registry page: what the registry holds, kept up to date by the Query API's own WebSocket subscriptions
// (one per resource type), filtered by re-subscribing with the filter's query parameters. Plain DOM, no library;
// every text from the registry goes in through textContent, never as HTML.
"use strict";

const KINDS = ["nodes", "devices", "sources", "flows", "senders", "receivers"];
const TITLES = {nodes: "Nodes", devices: "Devices", sources: "Sources", flows: "Flows", senders: "Senders",
                receivers: "Receivers"};
const PARENT_KEYS = {devices: [["node_id", "nodes"]], sources: [["device_id", "devices"]],
                     flows: [["source_id", "sources"], ["device_id", "devices"]],
                     senders: [["device_id", "devices"], ["flow_id", "flows"]],
                     receivers: [["device_id", "devices"]]};
const CHILD_KEYS = {nodes: [["devices", "node_id"]],
                    devices: [["sources", "device_id"], ["flows", "device_id"], ["senders", "device_id"],
                              ["receivers", "device_id"]],
                    sources: [["flows", "source_id"]], flows: [["senders", "flow_id"]]};

const state = {
  config: null,
  token: sessionStorage.getItem("nmos-ref-token") || "",
  held: Object.fromEntries(KINDS.map((kind) => [kind, new Map()])),
  sockets: [],
  generation: 0,  // bumped at each (re)subscription: sockets of an older one are ignored
  params: {},
  tab: "nodes",
  selected: null,  // [kind, id]
  seen: new Map(),  // node id -> seconds since its last heartbeat, and when that was measured
  healthOff: false,
  drawPending: false,
};

const $ = (id) => document.getElementById(id);

function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function say(text) { $("message").textContent = text || ""; }

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = "status " + (kind || "");
}

function base(api) {
  const version = api === "query" ? state.config.query_version : state.config.registration_version;
  return `/x-nmos/${api}/${version}`;
}

class Refused extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function call(method, path, body) {
  const headers = {"Accept": "application/json"};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const answer = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  const text = await answer.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (error) { data = null; }
  if (!answer.ok) {
    const why = data && data.error ? `${answer.status} ${data.error}${data.debug ? ": " + data.debug : ""}`
                                   : `${answer.status}`;
    throw new Refused(answer.status, why);
  }
  return {data, date: answer.headers.get("Date")};
}

// --- the filter: "label=foo&format=urn:x-nmos:format:video" or "rql=eq(label,string:foo)"

function parseFilter(text) {
  const params = {};
  text = text.trim();
  if (!text) return params;
  if (text.startsWith("rql=")) {
    params["query.rql"] = text.slice(4);
    return params;
  }
  for (const part of text.split("&")) {
    const at = part.indexOf("=");
    if (at <= 0) throw new Error(`"${part}" is not key=value`);
    const key = part.slice(0, at).trim();
    params[key === "rql" ? "query.rql" : key] = part.slice(at + 1).trim();
  }
  return params;
}

// --- subscriptions

function closeSockets() {
  for (const socket of state.sockets) socket.close();
  state.sockets = [];
}

async function subscribeAll() {
  const generation = ++state.generation;
  closeSockets();
  for (const kind of KINDS) state.held[kind].clear();
  draw();
  setStatus("connecting", "");
  try {
    await Promise.all(KINDS.map((kind) => subscribe(kind, generation)));
    if (generation === state.generation) { setStatus("live", "live"); say(""); checkHealth(); }
  } catch (error) {
    if (generation !== state.generation) return;
    setStatus("not connected", "down");
    if (error instanceof Refused && (error.status === 401 || error.status === 403)) {
      $("token-form").hidden = false;
      say(`The registry asks for a token (${error.message}): paste a bearer token above.`);
    } else {
      say(`Could not subscribe: ${error.message}`);
    }
    closeSockets();
  }
}

async function subscribe(kind, generation) {
  const version = state.config.query_version;
  const request = {max_update_rate_ms: 100, resource_path: "/" + kind, params: state.params, persist: false};
  if (version !== "v1.0") request.secure = location.protocol === "https:";  // (from v1.1)
  if (version === "v1.3") request.authorization = Boolean(state.config.auth);  // (from v1.3)
  const {data} = await call("POST", base("query") + "/subscriptions", request);
  if (generation !== state.generation) return;
  // The socket at this page's own origin (the registry may name itself otherwise in ws_href): wss under https.
  const path = new URL(data.ws_href).pathname;
  const query = state.token ? "?access_token=" + encodeURIComponent(state.token) : "";
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path + query;
  await new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    state.sockets.push(socket);
    let opened = false;
    socket.onopen = () => { opened = true; resolve(); };
    socket.onmessage = (event) => { if (generation === state.generation) received(kind, event.data); };
    socket.onclose = () => {
      if (!opened) { reject(new Error(`the ${kind} socket did not open`)); return; }
      if (generation === state.generation) {  // the registry went away: start again in a while
        setStatus("reconnecting", "down");
        setTimeout(() => { if (generation === state.generation) subscribeAll(); }, 2000);
      }
    };
  });
}

function received(kind, text) {
  const message = JSON.parse(text);
  const grain = message.grain || {};
  for (const change of grain.data || []) {
    if (change.post) state.held[kind].set(change.path, change.post);
    else state.held[kind].delete(change.path);
  }
  draw();
}

// --- Nodes' heartbeats (the Registration API's health GET: when each Node was last heard of)

async function checkHealth() {
  if (state.healthOff) return;
  const nodes = [...state.held.nodes.keys()].slice(0, 200);
  for (const id of nodes) {
    try {
      const {data, date} = await call("GET", `${base("registration")}/health/nodes/${encodeURIComponent(id)}`);
      const now = date ? Date.parse(date) / 1000 : Date.now() / 1000;
      state.seen.set(id, {age: Math.max(0, now - Number(data.health)), at: Date.now() / 1000});
    } catch (error) {
      if (error instanceof Refused && (error.status === 401 || error.status === 403)) {
        state.healthOff = true;  // a token for the Query API only: no heartbeat ages
        return;
      }
      state.seen.delete(id);
    }
  }
  for (const id of [...state.seen.keys()]) if (!state.held.nodes.has(id)) state.seen.delete(id);
  draw();
}

function heartbeatAge(id) {
  const seen = state.seen.get(id);
  return seen === undefined ? null : seen.age + (Date.now() / 1000 - seen.at);
}

function expiring(id) {
  const age = heartbeatAge(id);
  return age !== null && age > state.config.expiry / 2;
}

// --- drawing

function labelOf(kind, id) {
  const resource = id ? state.held[kind].get(id) : null;
  return resource ? (resource.label || id) : id;
}

function link(kind, id) {
  if (!id) return element("span", {class: "muted"}, "none");
  const shown = state.held[kind].has(id) ? labelOf(kind, id) : id.slice(0, 8) + "…";
  return element("a", {href: "#", class: "rel", "data-kind": kind, "data-id": id,
                       onclick: (event) => { event.preventDefault(); select(kind, id); }}, shown);
}

function subscribers(senderId) {
  return [...state.held.receivers.values()].filter((r) => r.subscription && r.subscription.sender_id === senderId);
}

const COLUMNS = {
  nodes: [["Hostname", (r) => r.hostname || ""],
          ["Heartbeat", (r) => {
            const age = heartbeatAge(r.id);
            if (age === null) return element("span", {class: "muted"}, "?");
            const left = Math.max(0, state.config.expiry - age);
            return element("span", {class: "badge"}, expiring(r.id) ? `${Math.round(age)} s ago, expires in ` +
                           `${Math.round(left)} s` : `${Math.round(age)} s ago`);
          }]],
  devices: [["Type", (r) => (r.type || "").replace("urn:x-nmos:device:", "")], ["Node", (r) => link("nodes", r.node_id)]],
  sources: [["Format", (r) => (r.format || "").replace("urn:x-nmos:format:", "")],
            ["Device", (r) => link("devices", r.device_id)]],
  flows: [["Format", (r) => (r.format || "").replace("urn:x-nmos:format:", "")],
          ["Source", (r) => link("sources", r.source_id)]],
  senders: [["Transport", (r) => (r.transport || "").replace("urn:x-nmos:transport:", "")],
            ["Flow", (r) => link("flows", r.flow_id)],
            ["Receivers subscribed", (r) => {
              const found = subscribers(r.id);
              return found.length ? element("span", {}, ...found.map((x) => link("receivers", x.id)))
                                  : element("span", {class: "muted"}, "none");
            }]],
  receivers: [["Transport", (r) => (r.transport || "").replace("urn:x-nmos:transport:", "")],
              ["Subscribed to", (r) => link("senders", r.subscription && r.subscription.sender_id)]],
};

function draw() {
  if (state.drawPending) return;
  state.drawPending = true;
  requestAnimationFrame(() => { state.drawPending = false; drawNow(); });
}

function drawNow() {
  const tabs = $("tabs");
  tabs.replaceChildren(...KINDS.map((kind) => element("button", {
    type: "button", id: "tab-" + kind, class: kind === state.tab ? "active" : "",
    onclick: () => { state.tab = kind; drawNow(); }},
    TITLES[kind], element("span", {class: "count", id: "count-" + kind}, state.held[kind].size))));
  const columns = COLUMNS[state.tab];
  $("thead").replaceChildren(element("tr", {}, element("th", {}, "Label"), element("th", {}, "ID"),
                                     ...columns.map(([title]) => element("th", {}, title))));
  const rows = [...state.held[state.tab].values()].sort((a, b) => (a.label || "").localeCompare(b.label || "") ||
                                                                  a.id.localeCompare(b.id));
  $("tbody").replaceChildren(...rows.map((resource) => {
    const classes = [];
    if (state.selected && state.selected[1] === resource.id) classes.push("selected");
    if (state.tab === "nodes" && expiring(resource.id)) classes.push("expiring");
    return element("tr", {"data-id": resource.id, class: classes.join(" "),
                          onclick: (event) => { if (event.target.tagName !== "A") select(state.tab, resource.id); }},
                   element("td", {}, resource.label || ""), element("td", {}, element("code", {}, resource.id)),
                   ...columns.map(([, cell]) => element("td", {}, cell(resource))));
  }));
  drawDetail();
}

function drawDetail() {
  const panel = $("detail");
  if (!state.selected) { panel.hidden = true; return; }
  const [kind, id] = state.selected;
  const resource = state.held[kind].get(id);
  panel.hidden = false;
  $("detail-title").textContent = `${TITLES[kind].slice(0, -1)}: ${resource ? resource.label : id}`;
  const href = `${base("query")}/${kind}/${encodeURIComponent(id)}`;
  $("detail-links").replaceChildren(element("a", {href, target: "_blank", id: "detail-api"}, "in the Query API"));
  const relations = [];
  if (!resource) {
    relations.push(element("div", {class: "muted"}, "no longer held (deleted, expired or filtered out)"));
  } else {
    for (const [key, parentKind] of PARENT_KEYS[kind] || []) {
      relations.push(element("div", {}, `${key}: `, link(parentKind, resource[key])));
    }
    if (resource.parents && resource.parents.length) {
      relations.push(element("div", {}, "parents: ", ...resource.parents.map((p) => link(kind, p))));
    }
    if (kind === "receivers") {
      relations.push(element("div", {}, "subscribed to: ", link("senders", resource.subscription &&
                                                                        resource.subscription.sender_id)));
    }
    if (kind === "senders") {
      const found = subscribers(id);
      relations.push(element("div", {}, "receivers subscribed: ",
                             ...(found.length ? found.map((r) => link("receivers", r.id)) : ["none"])));
    }
    for (const [childKind, key] of CHILD_KEYS[kind] || []) {
      const children = [...state.held[childKind].values()].filter((child) => child[key] === id);
      relations.push(element("div", {}, `${TITLES[childKind]}: `,
                             ...(children.length ? children.map((c) => link(childKind, c.id)) : ["none"])));
    }
  }
  $("relations").replaceChildren(...relations);
  $("detail-json").textContent = resource ? JSON.stringify(resource, null, 2) : "";
}

function select(kind, id) {
  state.selected = [kind, id];
  if (state.tab !== kind) state.tab = kind;
  drawNow();
}

// --- start

async function start() {
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    try {
      state.params = parseFilter($("filter").value);
    } catch (error) {
      say(`Filter: ${error.message}`);
      return;
    }
    subscribeAll();
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("nmos-ref-token", state.token);
    state.healthOff = false;
    subscribeAll();
  });
  const answer = await fetch("/ui/config.json");
  state.config = await answer.json();
  if (state.config.auth) $("token-form").hidden = false;
  drawNow();
  if (state.config.auth && !state.token) {
    setStatus("no token", "down");
    say("The registry needs a bearer token (IS-10): paste one above.");
  } else {
    subscribeAll();
  }
  setInterval(checkHealth, 2000);
  setInterval(() => { if (state.tab === "nodes" && state.seen.size) draw(); }, 1000);  // heartbeat ages move on
}

start();
