// The clinicians' screens: a page over /api/v1 (the same services, policy and store as every other client).
// Rendered from the study definition (/api/v1/study, /api/v1/forms/{id}); no rule of the study lives here.
"use strict";

const state = { session: null, study: null, forms: {}, messages: {}, lang: "en" };

// -- messages: every text of the interface is in /web/i18n/{lang}.json ---------------------------------
async function loadMessages(lang) {
  const response = await fetch(`/web/i18n/${lang}.json`);
  state.messages = response.ok ? await response.json() : {};
  state.lang = lang;
  document.documentElement.lang = lang;
}
function t(key, params) {
  let text = state.messages[key] ?? key;
  for (const [name, value] of Object.entries(params || {})) text = text.replaceAll(`{${name}}`, String(value));
  return text;
}

// -- DOM helpers ---------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
function announce(text) {
  const region = document.getElementById("announce");
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 30);
}
function render(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes.filter(n => n !== null && n !== undefined && n !== false));
}
function may(action) { return !!state.session?.actions?.includes(action); }

// -- the API, with the session cookie and its CSRF token -----------------------------------------------
class ApiError extends Error {
  constructor(status, body) { super(body?.detail || `HTTP ${status}`); this.status = status; this.body = body || {}; }
}
async function everyPage(path) {  // a paginated list whole: its pages of the largest size, in order
  const items = [];
  for (;;) {
    const { data } = await api("GET", `${path}${path.includes("?") ? "&" : "?"}limit=500&offset=${items.length}`);
    items.push(...(data.items || []));
    if (!(data.items || []).length || items.length >= data.total) return { data: { ...data, items } };
  }
}

async function api(method, path, body, headers) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...(headers || {}) } };
  if (method !== "GET") init.headers["X-CSRF-Token"] = state.session?.csrf || "";
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!response.ok) {
    if (response.status === 401 && !String(data?.detail || "").includes("21 CFR")) {
      state.session = null;
      await boot();
    }
    throw new ApiError(response.status, data);
  }
  return { data, response };
}
function problem(error) {
  return h("div", { class: "error", role: "alert" }, error instanceof ApiError ? error.message : String(error));
}

// -- the site's dates: what the site's calendar says, shown as its locale writes them ------------------
function siteZone(site) { return state.study?.sites.find(s => s.id === site)?.time_zone || "UTC"; }
function showMoment(iso, site) {
  if (!iso) return "";
  return new Intl.DateTimeFormat(state.lang === "zh" ? "zh-CN" : "en-GB",
    { dateStyle: "medium", timeStyle: "short", timeZone: siteZone(site) }).format(new Date(iso)) + ` (${siteZone(site)})`;
}

// -- sign-in ------------------------------------------------------------------------------------------
async function boot() {
  const info = (await (await fetch("/web-auth/session", { credentials: "same-origin" })).json());
  state.session = info.signed_in ? info : null;
  state.info = info;
  renderHeader();
  if (!state.session) return renderSignIn(info);
  if (!state.study) state.study = (await api("GET", "/api/v1/study")).data;
  route();
}

function renderSignIn(info) {
  const parts = [h("h1", {}, t("signin.title"))];
  if (info.oidc) {
    parts.push(h("p", {}, h("a", { href: "/web-auth/oidc/login", id: "oidc-login" }, t("signin.oidc"))));
  }
  if (info.dev_login) {
    const role = h("select", { id: "dev-role", name: "role" }, info.roles.map(r => h("option", { value: r }, t(`role.${r}`))));
    const site = h("select", { id: "dev-site", name: "site" },
      h("option", { value: "" }, t("signin.all_sites")), info.sites.map(s => h("option", { value: s.id }, `${s.id} — ${s.name}`)));
    site.value = info.sites[0]?.id || "";
    const error = h("div", { "aria-live": "polite" });
    const form = h("form", { id: "dev-login", onsubmit: async (event) => {
      event.preventDefault();
      const response = await fetch("/web-auth/dev-login", { method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ role: role.value, site: site.value || null }) });
      if (!response.ok) { error.replaceChildren(problem(new ApiError(response.status, await response.json()))); return; }
      location.hash = "#/";
      await boot();
    } },
      h("p", {}, t("signin.dev_note")),
      h("div", { class: "row" },
        h("label", { for: "dev-role" }, t("signin.role"), role),
        h("label", { for: "dev-site" }, t("signin.site"), site),
        h("button", { type: "submit" }, t("signin.submit"))),
      error);
    parts.push(h("section", { class: "panel", "aria-labelledby": "dev-title" }, h("h2", { id: "dev-title" }, t("signin.dev")), form));
  }
  if (!info.oidc && !info.dev_login) parts.push(h("p", {}, t("signin.none")));
  render(...parts);
}

function renderHeader() {
  const top = document.getElementById("top");
  const nav = document.getElementById("nav");
  const lang = h("select", { id: "lang", "aria-label": t("header.language"), onchange: async (e) => {
    localStorage.setItem("ecrf.lang", e.target.value); await loadMessages(e.target.value); renderHeader(); route(); } },
    h("option", { value: "en" }, "English"), h("option", { value: "zh" }, "中文"));
  lang.value = state.lang;
  const who = state.session
    ? [h("span", { id: "who" }, t("header.signed_in_as", { sub: state.session.sub,
        role: state.session.user_roles.map(r => t(`role.${r}`)).join(", "),
        sites: state.session.user_sites ? state.session.user_sites.join(", ") : t("signin.all_sites") })),
       h("button", { class: "secondary", id: "logout", onclick: async () => {
         await api("POST", "/web-auth/logout", {}); state.session = null; location.hash = "#/"; await boot(); } }, t("header.logout"))]
    : [];
  top.replaceChildren(h("strong", {}, t("app.title")), h("span", { class: "grow" }, state.info?.study || ""), ...who, lang);
  if (!state.session) { nav.replaceChildren(); return; }
  const links = [["#/", t("nav.subjects"), may("subject.read")], ["#/queries", t("nav.queries"), may("query.read")],
                 ["#/exports", t("nav.exports"), may("export.deidentified")]];
  nav.replaceChildren(h("ul", {}, links.filter(l => l[2]).map(([href, label]) => h("li", {}, h("a", { href }, label)))));
}

// -- routing ------------------------------------------------------------------------------------------
// Routes run one after another, each for the address it started with, so a slow page never paints over a
// newer one; `data-ready` on <body> says which address the page shows (tests and screen readers wait for it).
let routing = Promise.resolve();
function route() {
  routing = routing.then(showRoute, showRoute);
  return routing;
}
async function showRoute() {
  if (!state.session) return;
  const shown = location.hash;
  delete document.body.dataset.ready;
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === "subjects" && parts[2] === "forms") await formPage(parts[1], parts[3], parts[4]);
    else if (parts[0] === "subjects" && parts[2] === "entries")  // #/subjects/{id}/entries/{form}/{visit or -}/{entry or new}
      await formPage(parts[1], parts[3], parts[4] === "-" ? null : parts[4], parts[5] || "new");
    else if (parts[0] === "subjects") await subjectPage(parts[1]);
    else if (parts[0] === "queries") await queriesPage();
    else if (parts[0] === "exports") await exportsPage();
    else await homePage();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) render(problem(error));
  }
  const heading = document.querySelector("main h1");
  if (heading) document.title = `${heading.textContent} — eCRF`;
  document.body.dataset.ready = shown;
}
window.addEventListener("hashchange", () => { route().then(() => document.getElementById("main").focus()); });

async function formDef(formId) {
  if (!state.forms[formId]) state.forms[formId] = (await api("GET", `/api/v1/forms/${encodeURIComponent(formId)}`)).data;
  return state.forms[formId];
}

// -- home: the screening log of the caller's sites ------------------------------------------------------
async function homePage() {
  const parts = [h("h1", {}, t("home.title"))];
  if (may("subject.enrol")) parts.push(enrolForm());
  if (!may("subject.read")) {
    render(...parts, h("p", {}, t("home.no_subjects_role")));
    return;
  }
  // every page of both lists: a site with more subjects than one page still sees each one with its eligibility
  const [subjects, log] = await Promise.all([everyPage("/api/v1/subjects"), everyPage("/api/v1/eligibility")]);
  if (may("safety.read")) parts.push(await saePanel(subjects.data.items).catch(error => (error.status === 404 ? null : problem(error))));
  const eligibility = Object.fromEntries((log.data.items || []).map(e => [e.subject || e.subject_id || e.id, e]));
  const rows = subjects.data.items.map(s => {
    const e = eligibility[s.id] || {};
    const blocking = (e.blocking || e.blocking_criteria || []).map(b => typeof b === "string" ? b : b.id).join(", ");
    return h("tr", {},
      h("td", {}, h("a", { href: `#/subjects/${s.id}` }, s.mrn || s.id)),
      h("td", {}, s.site), h("td", {}, t(`subject.status.${s.status}`)),
      h("td", { class: `result-${e.status}` }, e.status ? t(`eligibility.${e.status}`) : ""),
      h("td", {}, blocking), h("td", {}, s.arm || ""), h("td", {}, s.open_queries ?? ""));
  });
  parts.push(h("table", { id: "subjects" },
    h("caption", { class: "visually-hidden" }, t("home.title")),
    h("thead", {}, h("tr", {}, ["home.mrn", "home.site", "home.status", "home.eligibility", "home.blocking", "home.arm", "home.queries"]
      .map(k => h("th", { scope: "col" }, t(k))))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 7 }, t("home.empty"))))));
  render(...parts);
}

// The open serious adverse events of the caller's sites, with their 24-hour clock (the server's, CRF-SPEC 7.2)
async function saePanel(subjects) {
  const { data } = await api("GET", "/api/v1/safety/sae?status=due&status=overdue");
  const mrn = Object.fromEntries(subjects.map(s => [s.id, s.mrn || s.id]));
  const items = [...data.items].sort((a, b) => (a.status === "overdue" ? 0 : 1) - (b.status === "overdue" ? 0 : 1) || a.due_at.localeCompare(b.due_at));
  return h("section", { class: "panel", id: "sae", "aria-labelledby": "sae-title" },
    h("h2", { id: "sae-title" }, t("sae.title"), " ", h("span", { class: "badge", id: "sae-count" }, String(items.length))),
    h("p", {}, t("sae.note", { hours: data.due_within_hours })),
    items.length ? h("table", { id: "sae-list" },
      h("caption", { class: "visually-hidden" }, t("sae.title")),
      h("thead", {}, h("tr", {}, ["home.mrn", "home.site", "sae.aware_at", "sae.due_at", "home.status"].map(k => h("th", { scope: "col" }, t(k))))),
      h("tbody", {}, items.map(i => h("tr", { "data-entry": i.entry_id, "data-status": i.status },
        h("td", {}, h("a", { href: entryHash(i.subject_id, i.form_id, null, i.entry_id) }, mrn[i.subject_id] || i.subject_id)),
        h("td", {}, i.site), h("td", {}, showMoment(i.aware_at, i.site)), h("td", {}, showMoment(i.due_at, i.site)),
        h("td", {}, saeBadge(i))))))
      : h("p", { id: "sae-none" }, t("sae.none")));
}

// An SAE's clock on its entry, and the investigator's record of the report to the sponsor (once)
function saeClockPanel(sae, formUrl, site) {
  const message = h("div", { id: "sae-message", "aria-live": "polite" });
  const facts = h("dl", { class: "allocation" },
    h("dt", {}, t("home.status")), h("dd", { id: "sae-status" }, saeBadge(sae)),
    h("dt", {}, t("sae.aware_at")), h("dd", {}, showMoment(sae.aware_at, site), sae.aware_by ? ` — ${sae.aware_by}` : ""),
    h("dt", {}, t("sae.due_at")), h("dd", {}, showMoment(sae.due_at, site)),
    sae.reported_at ? [h("dt", {}, t("sae.reported_at")), h("dd", { id: "sae-reported" },
      showMoment(sae.reported_at, site), sae.reported_by ? ` — ${sae.reported_by}` : "", " · ", t(sae.on_time ? "sae.on_time" : "sae.late"))] : null,
    sae.reference ? [h("dt", {}, t("sae.reference")), h("dd", { id: "sae-reference-shown" }, sae.reference)] : null);
  let report = null;
  if (may("sae.report") && ["due", "overdue"].includes(sae.status)) {
    const reference = h("input", { id: "sae-reference", required: true, maxlength: 200, autocomplete: "off" });
    const when = h("input", { id: "sae-reported-at", type: "datetime-local" });
    report = h("form", { id: "sae-report", onsubmit: async (event) => {
      event.preventDefault();
      const body = { reference: reference.value.trim() };
      if (when.value) body.reported_at = new Date(when.value).toISOString();  // as this computer's clock reads it
      try {
        await api("POST", `${formUrl}/sae-report`, body);
        await route();
        document.getElementById("sae-message")?.replaceChildren(h("p", { class: "ok" }, t("sae.reported_done")));
        announce(t("sae.reported_done"));
      } catch (error) {
        const findings = error.status === 422 ? (error.body.errors || []).map(e => e.message).join("; ") : "";
        message.replaceChildren(h("div", { class: "error", role: "alert" }, findings || error.message));
        announce(findings || error.message);
      }
    } },
      h("h3", {}, t("sae.report_title")),
      h("div", { class: "row" },
        h("label", { for: "sae-reference" }, t("sae.reference"), reference),
        h("label", { for: "sae-reported-at" }, t("sae.reported_at_input"), when),
        h("button", { type: "submit", id: "sae-report-submit" }, t("sae.report"))));
  }
  return h("section", { class: "panel", id: "sae-clock", "aria-labelledby": "sae-clock-title" },
    h("h2", { id: "sae-clock-title" }, t("sae.clock_title")), facts, report, message);
}

function enrolForm() {
  const sites = state.session.user_sites || state.study.sites.map(s => s.id);
  const site = h("select", { id: "enrol-site" }, sites.map(s => h("option", { value: s }, s)));
  const mrn = h("input", { id: "enrol-mrn", required: true, autocomplete: "off" });
  const consent = h("input", { id: "enrol-consent", type: "date", required: true });
  const message = h("div", { "aria-live": "polite" });
  return h("form", { class: "panel", id: "enrol", "aria-labelledby": "enrol-title", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const { data } = await api("POST", "/api/v1/subjects", { site: site.value, mrn: mrn.value, consent_date: consent.value });
      announce(t("enrol.done", { mrn: data.mrn }));
      location.hash = `#/subjects/${data.id}`;
    } catch (error) { message.replaceChildren(problem(error)); }
  } },
    h("h2", { id: "enrol-title" }, t("enrol.title")),
    h("div", { class: "row" },
      h("label", { for: "enrol-site" }, t("home.site"), site),
      h("label", { for: "enrol-mrn" }, t("home.mrn"), mrn),
      h("label", { for: "enrol-consent" }, t("enrol.consent_date"), consent),
      h("button", { type: "submit" }, t("enrol.submit"))),
    message);
}

// -- a subject: visit schedule, forms, eligibility, queries --------------------------------------------
async function subjectPage(subjectId) {
  const subject = (await api("GET", `/api/v1/subjects/${encodeURIComponent(subjectId)}`)).data;
  const quiet = (promise) => promise.then(r => r.data, () => null);  // a panel that cannot be read is left out
  const [endpoints, saes] = await Promise.all([
    // a study without derived endpoints answers 404: no panel; another failure is shown in the panel
    may("endpoints.read") ? api("GET", `/api/v1/subjects/${encodeURIComponent(subject.id)}/endpoints`)
      .then(r => r.data, error => (error.status === 404 ? null : { error })) : null,
    may("safety.read") ? quiet(api("GET", `/api/v1/safety/sae?site=${encodeURIComponent(subject.site)}`)) : null]);
  const saeOf = Object.fromEntries((saes?.items || []).filter(s => s.subject_id === subject.id).map(s => [`${s.form_id}/${s.entry_id}`, s]));
  const ended = subject.end_date;  // ResearchSubject.period.end, the end of participation (end_of_study)
  const parts = [h("h1", {}, t("subject.title", { mrn: subject.mrn || subject.id })),
    h("p", { id: "subject-summary" }, `${t("home.site")}: ${subject.site} · ${t("home.status")}: `,
      h("strong", { id: "subject-status", "data-status": subject.status }, t(`subject.status.${subject.status}`)),
      ended ? [` · ${t("subject.end_date")}: `, h("span", { id: "subject-end-date" }, ended)] : "",
      subject.arm ? ` · ${t("home.arm")}: ${subject.arm}` : "", subject.day_zero ? ` · ${t("subject.day_zero")}: ${subject.day_zero}` : "")];
  const titles = Object.fromEntries(state.study.forms.map(f => [f.id, f.title]));
  const repeating = new Set(state.study.forms.filter(f => f.repeating).map(f => f.id));
  const logs = state.study.forms.filter(f => f.kind === "log");
  // every entry of the repeating and log forms, one request per form (a repeating form's list spans its visits)
  const entryLists = may("form.read") ? Object.fromEntries(await Promise.all([...repeating, ...logs.map(f => f.id)].map(async formId =>
    [formId, (await api("GET", entriesUrl(subject.id, formId, null))).data]))) : {};
  const atVisit = (formId, visitId) => (entryLists[formId] || []).filter(e => e.visit_id === visitId);
  parts.push(h("h2", {}, t("subject.schedule")), h("table", { id: "visits" },
    h("thead", {}, h("tr", {}, ["subject.visit", "subject.window", "subject.visit_status", "subject.forms"].map(k => h("th", { scope: "col" }, t(k))))),
    h("tbody", {}, subject.visits.map(v => h("tr", {},
      h("th", { scope: "row" }, v.label, " ", h("span", { class: "source" }, `(${v.id})`)),
      h("td", {}, v.window_start ? `${v.window_start} – ${v.window_end} (${t("subject.target")} ${v.target_date})` : t("subject.no_window")),
      h("td", {}, t(`visit.${v.status}`)),
      h("td", {}, h("ul", {}, Object.entries(v.forms).map(([formId, status]) => h("li", { "data-form": formId },
        h("a", { href: `#/subjects/${subject.id}/forms/${formId}/${v.id}` }, titles[formId] || formId), " — ", t(`form.status.${status}`),
        repeating.has(formId) ? visitEntries(subject.id, formId, v.id, atVisit(formId, v.id)) : null)))))))));
  if (endpoints) parts.push(await endpointsPanel(subject, endpoints, entryLists));
  for (const log of logs) parts.push(await logPanel(subject, log, entryLists[log.id] || [], saeOf));
  const eligibility = may("eligibility.read")
    ? (await api("GET", `/api/v1/subjects/${encodeURIComponent(subject.id)}/eligibility`)).data : null;
  if (state.study.randomisation && may("randomisation.read")) parts.push(await randomisationPanel(subject, eligibility));
  if (eligibility) parts.push(eligibilityPanel(eligibility));
  if (may("query.read")) parts.push(await queryPanel(subject.id, {}));
  render(...parts);
}

// -- entries: log forms (adverse events, medication) and the extra entries of repeating forms at a visit ------
function shownValue(item, stored) {
  if (!stored || stored.value === null || stored.value === undefined) return "";
  const word = (v) => { const key = `value.${item.id}.${v}`; return t(key) === key ? String(v) : t(key); };
  if (Array.isArray(stored.value)) return stored.value.map(word).join(", ");
  if (item.type === "boolean") return stored.value ? t("form.yes") : t("form.no");
  if (item.type === "code") return word(stored.value);
  return `${stored.value}${stored.unit ? ` ${stored.unit}` : ""}`;
}
function entryStatus(entry, sae) {
  const status = entry.status === "entered_in_error"
    ? h("span", { class: "badge withdrawn" }, t("entries.withdrawn_badge"), entry.withdrawn_reason ? `: ${entry.withdrawn_reason}` : "")
    : t(`form.status.${entry.status}`);
  return h("span", {}, status,
    entry.source === "fhir" ? [" ", ehrBadge()] : null,  // beside eCRF entries, marked
    entry.deviation ? [" ", deviationBadge(entry.deviation)] : null,
    sae && ["due", "overdue", "reported"].includes(sae.status) ? [" ", saeBadge(sae)] : null);
}
function deviationBadge(text) {
  return h("span", { class: "badge deviation", "data-deviation": text }, t("entries.deviation_badge"),
    h("span", { class: "visually-hidden" }, `: ${text}`));
}
function saeBadge(sae) {
  return h("span", { class: `badge sae sae-${sae.status}`, "data-sae": sae.status }, t(`sae.badge.${sae.status}`));
}
function ehrBadge() {
  return h("span", { class: "badge ehr", "data-source": "fhir" }, t("entries.from_ehr"));
}
function visitEntries(subjectId, formId, visitId, entries) {
  return h("div", { class: "entries", "data-entries": `${formId}/${visitId}` },
    entries.length ? h("ol", {}, entries.map(e => h("li", { "data-entry": e.id, "data-status": e.status, "data-source": e.source, class: e.status === "entered_in_error" ? "withdrawn" : null },
      h("a", { href: entryHash(subjectId, formId, visitId, e.id) }, t("entries.entry_of", { date: e.visit_date || "" })), " — ", entryStatus(e)))) : null,
    may("form.write") ? h("a", { class: "add-entry", href: entryHash(subjectId, formId, visitId, "new") }, t("entries.add"),
      h("span", { class: "visually-hidden" }, ` (${formId}, ${visitId})`)) : null);
}
async function logPanel(subject, log, entries, saeOf) {
  const definition = await formDef(log.id);
  const shown = definition.items.filter(i => !i.derived).slice(0, 3);  // the first items say what the entry is
  const dateItem = definition.items.find(i => i.id === definition.date_item);
  const columns = [dateItem ? dateItem.label : t("entries.date"), ...shown.filter(i => i !== dateItem).map(i => i.label), t("home.status")];
  return h("section", { class: "panel log", id: `log-${log.id}`, "aria-labelledby": `log-${log.id}-title` },
    h("h2", { id: `log-${log.id}-title` }, log.title),
    entries.length ? h("table", {},
      h("thead", {}, h("tr", {}, columns.map(c => h("th", { scope: "col" }, c)), h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, t("entries.open"))))),
      h("tbody", {}, entries.map(e => h("tr", { "data-entry": e.id, "data-status": e.status, "data-source": e.source, class: e.status === "entered_in_error" ? "withdrawn" : null },
        h("td", {}, dateItem ? shownValue(dateItem, e.items[dateItem.id]) || e.visit_date : e.visit_date || ""),
        shown.filter(i => i !== dateItem).map(i => h("td", {}, shownValue(i, e.items[i.id]))),
        h("td", {}, entryStatus(e, saeOf?.[`${log.id}/${e.id}`])),
        h("td", {}, h("a", { href: entryHash(subject.id, log.id, null, e.id) }, t("entries.open")))))))
      : h("p", {}, t("entries.none")),
    may("form.write") ? h("p", {}, h("a", { class: "add-entry", id: `add-${log.id}`, href: entryHash(subject.id, log.id, null, "new") },
      t("entries.add_to", { title: log.title }))) : null);
}

// -- derived endpoints (RFS, OS): event or censored, days from randomisation, and what decided them -----------
// Evidence names a FHIR resource; where an entry of the subject holds it, the panel names the entry and links to it.
async function evidenceIndex(subjectId, entryLists) {
  const index = {};
  for (const [formId, entries] of Object.entries(entryLists)) {
    const definition = await formDef(formId);
    for (const entry of entries) {
      for (const [itemId, stored] of Object.entries(entry.items || {})) {
        if (!stored?.resource) continue;
        index[stored.resource] ??= { formId, definition, entry, items: {} };
        index[stored.resource].items[itemId] = definition.items.find(i => i.id === itemId)?.label || itemId;
      }
    }
  }
  return index;
}
function records(evidence) {  // one line per record and date: the dated facts of one entry are one record
  const seen = new Set();
  return evidence.filter(e => {
    const key = `${e.resourceType ? `${e.resourceType}/${e.id}` : e.form_instance || ""}|${e.date || ""}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  }).map(e => (e.resourceType ? { ...e, item: undefined, record: true } : e));
}
function evidenceOf(evidence, index, subjectId) {
  if (!evidence) return "";
  if (Array.isArray(evidence))
    return h("ul", { class: "evidence" }, records(evidence).map(e => h("li", {}, evidenceOf(e, index, subjectId))));
  if (evidence.randomisation_date) return h("span", { class: "evidence" }, t("endpoints.evidence.randomisation", { date: evidence.randomisation_date }));
  if (evidence.form_instance) return h("span", { class: "evidence" }, t("endpoints.evidence.visit_date", { date: evidence.date }));
  const reference = `${evidence.resourceType}/${evidence.id}`;
  const found = index[reference];
  const technical = h("span", { class: "source" }, ` (${reference}, ${t("endpoints.version", { n: evidence.version })})`);
  if (found) {
    const text = evidence.item && !evidence.record
      ? t("endpoints.evidence.entry", { form: found.definition.title, item: found.items[evidence.item] || evidence.item, date: evidence.date || "" })
      : t("endpoints.evidence.record", { form: found.definition.title, date: evidence.date || "" });
    return h("span", { class: "evidence", "data-resource": reference, "data-form": found.formId },
      h("a", { href: entryHash(subjectId, found.formId, found.entry.visit_id, found.entry.id) }, text),
      found.entry.source === "fhir" ? [" ", ehrBadge()] : null, technical);
  }
  const kind = { Patient: "patient", Condition: "condition" }[evidence.resourceType] || "resource";
  return h("span", { class: "evidence", "data-resource": reference },
    t(`endpoints.evidence.${kind}${evidence.date ? "" : "_undated"}`, { date: evidence.date || "" }), technical);
}
async function endpointsPanel(subject, data, entryLists) {
  const section = (...body) => h("section", { class: "panel", id: "endpoints", "aria-labelledby": "endpoints-title" },
    h("h2", { id: "endpoints-title" }, t("endpoints.title")), ...body);
  if (data.error) return section(problem(data.error));
  if (!data.randomised) return section(h("p", { id: "endpoints-not-randomised" }, t("endpoints.not_randomised")));
  const index = await evidenceIndex(subject.id, entryLists);
  const conflicts = [];
  for (const name of ["rfs", "os"]) {  // a conflict of the death dates concerns both endpoints: listed once
    for (const c of data[name]?.conflicts || []) {
      const key = `${c.kind}/${c.used}`;
      const known = conflicts.find(k => k.key === key);
      if (known) known.endpoints.push(name); else conflicts.push({ key, conflict: c, endpoints: [name] });
    }
  }
  // a kind the catalogue does not know yet is shown with the server's own message
  const worded = (key, params, message) => (state.messages[key] ? t(key, params) : message || key);
  const conflictText = (c) => worded(`endpoints.conflict.${c.kind}`, { dates: (c.dates || []).join(", "), used: c.used || "",
    death: c.death?.date || "" }, c.message);
  const openText = (o) => worded(`endpoints.open.${o.kind}`, { date: o.evidence?.date || "", end: o.end_of_study?.date || "",
    n: Array.isArray(o.evidence) ? records(o.evidence).length : 1 }, o.message);
  return section(
    h("p", {}, t("endpoints.day_zero", { date: data.randomisation_date, arm: data.arm || "" })),
    h("table", { id: "endpoints-table" },
      h("caption", { class: "visually-hidden" }, t("endpoints.title")),
      h("thead", {}, h("tr", {}, ["endpoints.endpoint", "endpoints.outcome", "endpoints.days", "endpoints.date", "endpoints.evidence"]
        .map(k => h("th", { scope: "col" }, t(k))))),
      h("tbody", {}, ["rfs", "os"].map(name => {
        const e = data[name];
        return h("tr", { "data-endpoint": name, "data-event": String(e.event) },
          h("th", { scope: "row" }, t(`endpoints.${name}`)),
          h("td", { class: "outcome" }, h("span", { class: e.event ? "badge event" : "badge censored" }, t(e.event ? `endpoints.event.${name}` : "endpoints.censored"))),
          h("td", { class: "days" }, t("endpoints.days_value", { n: e.days })),
          h("td", { class: "date" }, e.date),
          h("td", {}, evidenceOf(e.evidence, index, subject.id)));
      }))),
    conflicts.length ? h("div", { id: "endpoint-conflicts", role: "group", "aria-labelledby": "endpoint-conflicts-title" },
      h("h3", { id: "endpoint-conflicts-title" }, t("endpoints.conflicts")),
      h("ul", {}, conflicts.map(({ conflict, endpoints }) => h("li", { class: "warning", "data-kind": conflict.kind },
        `${endpoints.map(n => t(`endpoints.${n}`)).join(", ")}: ${conflictText(conflict)} ${t("endpoints.query_suggested")}`,
        h("div", {}, evidenceOf(conflict.evidence, index, subject.id)))))) : null,
    h("div", { id: "endpoint-open-items", role: "group", "aria-labelledby": "endpoint-open-title" },
      h("h3", { id: "endpoint-open-title" }, t("endpoints.open_items")),
      data.open_items?.length ? h("ul", {}, data.open_items.map(o => h("li", { class: "warning", "data-kind": o.kind },
        openText(o), h("div", {}, evidenceOf(o.evidence, index, subject.id))))) : h("p", {}, t("endpoints.no_open_items"))),
    data.computed_at ? h("p", { class: "source" }, t("endpoints.computed_at", { at: showMoment(data.computed_at, subject.site) })) : null);
}

// Randomisation by the system (CRF-SPEC 6): the site asks, the server allocates; nobody types the arm.
async function randomisationPanel(subject, eligibility) {
  const { data } = await api("GET", `/api/v1/subjects/${encodeURIComponent(subject.id)}/randomisation`);
  const message = h("div", { id: "randomise-message", "aria-live": "polite" });
  const allocation = (a) => h("dl", { id: "allocation", class: "allocation" },
    h("dt", {}, t("randomise.arm")), h("dd", { id: "allocation-arm" }, a.arm),
    h("dt", {}, t("randomise.number")), h("dd", { id: "allocation-number" }, a.randomisation_number || t("randomise.entered")),
    h("dt", {}, t("randomise.date")), h("dd", { id: "allocation-date" }, a.randomisation_date || ""),
    a.stratum ? [h("dt", {}, t("randomise.stratum")), h("dd", {}, a.stratum)] : null);
  const body = [];
  if (data.randomised) body.push(allocation(data));
  else {
    body.push(h("p", {}, t("randomise.not_yet")));
    if (may("randomisation.allocate") && eligibility?.status === "eligible") {
      const button = h("button", { type: "button", id: "randomise", onclick: async () => {
        button.disabled = true;
        try {
          const { data: done } = await api("POST", `/api/v1/subjects/${encodeURIComponent(subject.id)}/randomise`, {});
          await route();
          const text = t("randomise.done", { arm: done.arm, number: done.randomisation_number || "" });
          document.getElementById("randomise-message")?.replaceChildren(h("p", { class: "ok" }, text));
          announce(text);
        } catch (error) {
          button.disabled = false;
          if (error.status === 409) {
            const blocking = error.body.errors || [];
            message.replaceChildren(h("div", { class: "error", role: "alert", id: "randomise-refused" },
              h("p", {}, error.message),
              h("ul", {}, blocking.map(b => h("li", { "data-criterion": b.item }, `${b.item}: ${b.message}`)))));
          } else message.replaceChildren(problem(error));
          announce(error.message);
        }
      } }, t("randomise.button"));
      body.push(h("p", {}, t("randomise.eligible_note")), button);
    } else if (may("randomisation.allocate")) body.push(h("p", {}, t("randomise.needs_eligible")));
  }
  return h("section", { class: "panel", id: "randomisation", "aria-labelledby": "randomisation-title" },
    h("h2", { id: "randomisation-title" }, t("randomise.title")), ...body, message);
}

function eligibilityPanel(data) {
  const described = Object.fromEntries(state.study.criteria.map(c => [c.id, c.description]));
  return h("section", { class: "panel", id: "eligibility", "aria-labelledby": "eligibility-title" },
    h("h2", { id: "eligibility-title" }, t("eligibility.title"), ": ",
      h("span", { class: `result-${data.status}`, id: "eligibility-status" }, t(`eligibility.${data.status}`))),
    h("p", {}, t("eligibility.reference", { date: data.reference_date || "" })),
    h("table", {},
      h("thead", {}, h("tr", {}, ["eligibility.criterion", "eligibility.result", "eligibility.reason", "eligibility.evidence"].map(k => h("th", { scope: "col" }, t(k))))),
      h("tbody", {}, data.criteria.map(c => h("tr", { "data-criterion": c.id },
        h("th", { scope: "row" }, described[c.id] || c.id, h("br"), h("span", { class: "source" }, `${c.id} · ${t(`criterion.${c.kind}`)}`)),
        h("td", { class: `result-${c.result}` }, t(`criterion.result.${c.result}`)),
        h("td", {}, c.reason || ""),
        h("td", {}, (c.evidence || []).map(e => h("div", {}, `${e.item}: ${typeof e.value === "object" ? JSON.stringify(e.value) : e.value}`))))))));
}

async function queryPanel(subjectId, filter, rerender) {
  const params = new URLSearchParams({ limit: "500", ...filter });
  const { data } = await api("GET", `/api/v1/subjects/${encodeURIComponent(subjectId)}/queries?${params}`);
  const refresh = rerender || (() => route());
  return h("section", { class: "panel", id: "queries", "aria-labelledby": "queries-title" },
    h("h2", { id: "queries-title" }, t("queries.title")),
    data.items.length ? h("ul", {}, data.items.map(q => queryEntry(q, refresh))) : h("p", {}, t("queries.none")));
}

function queryEntry(q, refresh) {
  const text = h("input", { id: `q-text-${q.id}`, "aria-label": t("queries.reply") });
  const act = async (name, body) => {
    try { await api("POST", `/api/v1/queries/${q.id}/${name}`, body); announce(t(`queries.${name}ed`)); await refresh(); }
    catch (error) { announce(error.message); }
  };
  const buttons = [];
  if (q.status !== "closed" && may("query.answer"))
    buttons.push(text, h("button", { type: "button", class: "q-answer", onclick: () => act("answer", { text: text.value }) }, t("queries.answer")));
  if (q.status !== "closed" && may("query.close"))
    buttons.push(h("button", { type: "button", class: "q-close secondary", onclick: () => act("close", {}) }, t("queries.close")));
  return h("li", { class: "query", "data-query": q.id, "data-status": q.status },
    h("strong", {}, [q.form_id, q.visit_id, q.item_id].filter(Boolean).join(" / ")), " — ",
    h("span", { class: "badge" }, t(`queries.status.${q.status}`)),
    h("ul", {}, (q.messages || q.thread || []).map(m => h("li", {}, `${m.author_sub || ""} (${m.action}): ${m.text || ""}`))),
    h("div", { class: "row" }, buttons));
}

// -- a form at a visit -------------------------------------------------------------------------------
function enabled(item, values) {
  const when = item.enable_when;
  if (!when) return true;
  return values[when.item] === when.equals;
}
function currentValue(item, input, unit) {
  if (!input) return null;
  if (item.type === "boolean") return input.value === "" ? null : input.value === "true";
  if (item.type === "codes") {
    const checked = [...input.querySelectorAll("input[type=checkbox]:checked")].map(box => box.value);
    return checked.length ? checked : null;
  }
  if (item.type === "text") return input.value.trim() === "" ? null : input.value;
  if (input.value === "") return null;
  if (item.type === "quantity") {
    const value = Number(input.value);
    return unit && unit.value !== item.unit ? { value, unit: unit.value } : value;
  }
  if (item.type === "integer") return Number(input.value);
  return input.value;
}

function entriesUrl(subjectId, formId, visitId) {
  return `/api/v1/subjects/${encodeURIComponent(subjectId)}/forms/${encodeURIComponent(formId)}/` +
    (visitId ? `${encodeURIComponent(visitId)}/entries` : "entries");
}
function entryHash(subjectId, formId, visitId, entryId) {
  return `#/subjects/${subjectId}/entries/${formId}/${visitId || "-"}/${entryId}`;
}

// A visit form (entryId undefined), or one entry of a log form (visitId null) or of a repeating form at a visit;
// entryId "new" is an entry not yet saved. The same widgets, edit checks and lifecycle for all.
async function formPage(subjectId, formId, visitId, entryId) {
  const isEntry = entryId !== undefined;
  const base = `/api/v1/subjects/${encodeURIComponent(subjectId)}/forms/${encodeURIComponent(formId)}/${encodeURIComponent(visitId)}`;
  const blank = { status: "not_started", version: 0, items: {}, visit_date: null };
  const [definition, read, subject] = await Promise.all([formDef(formId),
    isEntry && entryId === "new" ? Promise.resolve({ data: blank })
      : api("GET", isEntry ? `${entriesUrl(subjectId, formId, visitId)}/${encodeURIComponent(entryId)}` : base),
    api("GET", `/api/v1/subjects/${encodeURIComponent(subjectId)}`)]);
  let view = read.data;
  const withdrawn = view.status === "entered_in_error";
  const clock = state.study.safety;  // only an entry of the SAE clock's form can have a clock
  const sae = isEntry && entryId !== "new" && may("safety.read") && clock && clock.form === formId
    ? (await api("GET", `/api/v1/safety/sae?site=${encodeURIComponent(subject.data.site)}`).then(r => r.data.items, () => []))
        .find(i => i.subject_id === subjectId && i.form_id === formId && i.entry_id === entryId) : null;
  const scheme = state.study.randomisation;
  const allocated = scheme && scheme.form === formId ? new Set(scheme.derived_items) : new Set();
  const editable = may("form.write") && view.status !== "locked" && !allocated.size && !withdrawn;
  const controls = {};
  const notes = {};
  const rows = {};
  const summary = h("div", { id: "form-messages", "aria-live": "assertive" });

  function values() {
    const out = {};
    for (const item of definition.items) {
      const c = controls[item.id];
      if (c) out[item.id] = currentValue(item, c.input, c.unit);
    }
    return out;
  }
  function applyConditions() {
    const now = values();
    for (const item of definition.items) rows[item.id].hidden = !enabled(item, now);
  }

  const items = definition.items.map(item => {
    const id = `item-${item.id}`;
    const stored = view.items[item.id];
    const note = h("div", { class: "notes", id: `${id}-notes` });
    notes[item.id] = note;
    let control;
    if (item.derived || allocated.has(item.id)) {
      control = h("output", { id, "aria-describedby": `${id}-notes` }, stored ? `${stored.value ?? ""} ${stored.unit || ""}` : "—");
      note.append(h("span", { class: "source" }, t(allocated.has(item.id) ? "form.allocated" : "form.derived")));
    } else {
      let input;
      let unit = null;
      if (item.type === "boolean") {
        input = h("select", { id }, h("option", { value: "" }, "—"), h("option", { value: "true" }, t("form.yes")), h("option", { value: "false" }, t("form.no")));
        if (stored && stored.value !== null && stored.value !== undefined) input.value = String(stored.value);
      } else if (item.type === "code") {
        input = h("select", { id }, h("option", { value: "" }, "—"), (item.values || []).map(v => h("option", { value: v }, t(`value.${item.id}.${v}`) === `value.${item.id}.${v}` ? v : t(`value.${item.id}.${v}`))));
        if (stored) input.value = stored.value;
      } else if (item.type === "date") {
        input = h("input", { id, type: "date" });
        if (stored) input.value = stored.value;
      } else if (item.type === "text") {
        input = h("textarea", { id, rows: 3, maxlength: item.max_length, cols: 50 });
        if (stored) input.value = stored.value ?? "";
        if (item.max_length) note.append(h("span", { class: "source" }, t("form.max_length", { n: item.max_length })));
      } else if (item.type === "codes") {
        const chosen = new Set(Array.isArray(stored?.value) ? stored.value : []);
        input = h("fieldset", { id, class: "codes", tabindex: "-1", "aria-labelledby": `${id}-label` },
          (item.values || []).map(v => {
            const shown = t(`value.${item.id}.${v}`) === `value.${item.id}.${v}` ? v : t(`value.${item.id}.${v}`);
            return h("label", { class: "choice" }, h("input", { type: "checkbox", id: `${id}-${v}`, value: v, checked: chosen.has(v) }), " ", shown);
          }));
      } else {
        input = h("input", { id, type: "number", step: "any", inputmode: "decimal" });
        if (item.type === "quantity") {
          unit = h("select", { id: `${id}-unit`, "aria-label": t("form.unit_of", { label: item.label }) },
            Object.keys(item.accepted_units || { [item.unit]: "1" }).map(u => h("option", { value: u }, u)));
          unit.value = item.unit;
          if (stored) {
            const entered = stored.entered || stored;
            input.value = entered.value;
            unit.value = entered.unit || item.unit;
          } else if (item.default !== undefined) input.value = item.default;
        } else if (stored) input.value = stored.value;
      }
      input.setAttribute("aria-describedby", `${id}-notes`);
      if (!editable) { input.disabled = true; if (unit) unit.disabled = true; }  // a fieldset disables its boxes
      input.addEventListener("change", applyConditions);
      controls[item.id] = { input, unit };
      control = h("span", { class: "control" }, input, unit);
    }
    if (stored && stored.source === "fhir")
      note.append(h("span", { class: "source ehr" }, t("form.from_ehr", { date: stored.effective || "" })));
    for (const alt of view.alternatives?.[item.id] || [])
      note.append(h("div", { class: "source alternative" }, t("form.alternative", { value: `${alt.value ?? ""} ${alt.unit || ""}`, source: alt.source, date: alt.effective || "" })));
    const queries = view.open_queries_by_item?.[item.id];
    if (queries) note.append(h("span", { class: "badge warning" }, t("form.open_queries", { n: queries })));
    const raise = may("query.raise") && !isEntry ? h("button", { type: "button", class: "secondary raise", "data-for": item.id,
      onclick: () => raiseQuery(subjectId, formId, visitId, item) }, t("queries.raise_for", { label: item.label })) : null;
    const history = may("audit.read") && !isEntry ? h("button", { type: "button", class: "secondary history", "data-for": item.id,
      "aria-expanded": "false", onclick: (event) => itemHistory(event.currentTarget, note, subjectId, formId, visitId, item, subject.data.site) },
      t("form.history_of", { label: item.label })) : null;
    const label = item.derived || allocated.has(item.id) || item.type === "codes"
      ? h("span", { class: "label", id: `${id}-label` }, item.label, item.required ? h("span", { "aria-hidden": "true" }, " *") : null,
          item.required ? h("span", { class: "visually-hidden" }, ` (${t("form.required")})`) : null)
      : h("label", { for: id }, item.label, item.required ? h("span", { "aria-hidden": "true" }, " *") : null,
          item.required ? h("span", { class: "visually-hidden" }, ` (${t("form.required")})`) : null);
    rows[item.id] = h("div", { class: "item", "data-item": item.id }, label, h("div", { class: "row" }, control, raise, history), note);
    return rows[item.id];
  });

  const visitDate = h("input", { id: "visit-date", type: "date", disabled: !editable });
  if (view.visit_date) visitDate.value = view.visit_date;
  const reasonRow = h("div", { class: "item", id: "reason-row", hidden: true },
    h("label", { for: "reason" }, t("form.reason")), h("textarea", { id: "reason", rows: 2, "aria-describedby": "reason-notes" }),
    h("div", { class: "notes", id: "reason-notes" }));
  notes.reason = reasonRow.querySelector("#reason-notes");
  const general = h("div", { id: "form-findings" });  // findings about the form as a whole (visit date, window)

  function showFindings(errors, warnings) {
    for (const note of [...Object.values(notes), general]) note.querySelectorAll(".finding").forEach(n => n.remove());
    for (const c of Object.values(controls)) c.input.removeAttribute("aria-invalid");
    const first = [];
    for (const [list, cls] of [[errors, "error"], [warnings, "warning"]]) {
      for (const f of list || []) {
        if (f.rule === "reason_required") reasonRow.hidden = false;
        const target = notes[f.item] || (f.item === "reason" ? notes.reason : general);
        target.append(h("div", { class: `finding ${cls}`, "data-rule": f.rule, "data-about": f.item }, f.message));
        if (cls === "error" && controls[f.item]) { controls[f.item].input.setAttribute("aria-invalid", "true"); first.push(controls[f.item].input); }
      }
    }
    return first[0];
  }

  async function save(event) {
    event.preventDefault();
    const body = { items: {} };
    const now = values();
    for (const item of definition.items) {
      if (item.derived || !enabled(item, now)) continue;  // a hidden conditional item is not sent
      if (now[item.id] !== null && now[item.id] !== undefined) body.items[item.id] = now[item.id];
    }
    if (visitDate.value) body.visit_date = visitDate.value;
    const reason = document.getElementById("reason").value.trim();
    if (reason) body.reason = reason;
    try {
      const creating = isEntry && entryId === "new";
      const { data } = creating ? await api("POST", entriesUrl(subjectId, formId, visitId), body)
        : await api("PUT", formUrl, body, { "If-Match": `W/"${view.version}"` });
      if (creating) {  // the entry has its id now: show it at its own address, with its lifecycle and its warnings
        const shown = entryHash(subjectId, formId, visitId, data.id);
        history.replaceState(null, "", shown);
        state.savedWarnings = { hash: shown, warnings: data.warnings || [] };
        await route();
        return;
      }
      view = data;
      showFindings([], data.warnings);
      showDeviation(data.deviation);
      const text = data.warnings?.length ? t("form.saved_with_warnings", { n: data.warnings.length }) : t("form.saved");
      summary.replaceChildren(h("p", { class: data.warnings?.length ? "warning" : "ok" }, text));
      announce(text);
      status.textContent = t(`form.status.${data.status}`);
      reasonRow.hidden = true;
      document.getElementById("reason").value = "";
    } catch (error) {
      if (error.status === 422) {
        const first = showFindings(error.body.errors || [], []);
        const text = t("form.refused", { n: (error.body.errors || []).length });
        summary.replaceChildren(h("p", { class: "error" }, text));
        announce(text + " " + (error.body.errors || []).map(e => e.message).join("; "));
        if (!reasonRow.hidden && (error.body.errors || []).some(e => e.rule === "reason_required")) document.getElementById("reason").focus();
        else if (first) first.focus();
      } else if (error.status === 412) {
        const latest = (await api("GET", formUrl)).data;
        const changed = definition.items.filter(i => JSON.stringify(latest.items[i.id]?.value) !== JSON.stringify(view.items[i.id]?.value));
        summary.replaceChildren(h("div", { class: "error", role: "alert", id: "stale" },
          h("p", {}, t("form.stale", { who: latest.updated?.by || "", version: latest.version })),
          h("ul", {}, changed.map(i => h("li", {}, `${i.label}: ${latest.items[i.id] ? `${latest.items[i.id].value} ${latest.items[i.id].unit || ""}` : "—"}`))),
          h("button", { type: "button", id: "reload", onclick: () => route() }, t("form.reload"))));
        announce(t("form.stale", { who: latest.updated?.by || "", version: latest.version }));
      } else {
        summary.replaceChildren(problem(error));
        announce(error.message);
      }
    }
  }

  const deviationNote = h("p", { class: "warning", id: "deviation-note" });
  function showDeviation(text) {  // a protocol deviation the data show (visit window, cross-form checks)
    deviationNote.hidden = !text;
    deviationNote.replaceChildren(h("span", { class: "badge deviation" }, t("entries.deviation_badge")), " ", text || "");
  }
  showDeviation(view.deviation);
  const formUrl = isEntry ? `${entriesUrl(subjectId, formId, visitId)}/${encodeURIComponent(entryId)}` : base;
  const status = h("span", { id: "form-status" }, t(`form.status.${view.status}`));
  const visit = visitId ? subject.data.visits.find(v => v.id === visitId) : null;
  const where = visitId ? (visit ? visit.label : visitId) : t("entries.log");
  const title = isEntry ? `${definition.title} — ${where} — ${entryId === "new" ? t("entries.new") : t("entries.entry")}` : `${definition.title} — ${where}`;
  const dated = !(isEntry && !visitId && definition.date_item);  // a log entry with a date item is dated by it
  const parts = [
    h("p", {}, h("a", { href: `#/subjects/${subjectId}` }, t("form.back", { mrn: subject.data.mrn || subjectId }))),
    h("h1", {}, title),
    withdrawn ? h("p", { class: "error", id: "withdrawn-note" }, t("entries.withdrawn_reason", { reason: view.withdrawn_reason || "" })) : null,
    view.source === "fhir" ? h("p", { id: "ehr-note" }, ehrBadge(), " ", t("entries.from_ehr_note")) : null,
    deviationNote,
    h("p", {}, t("form.status"), ": ", status, view.updated ? ` · ${t("form.updated", { who: view.updated.by || "", at: showMoment(view.updated.at, subject.data.site) })}` : "",
      view.signature ? ` · ${t("form.signed_by", { who: view.signature.by || view.signature.name || "", meaning: view.signature.meaning || "" })}` : ""),
    h("form", { id: "crf", novalidate: true, onsubmit: save },
      dated ? h("div", { class: "item" }, h("label", { for: "visit-date" }, t(isEntry && !visitId ? "entries.date" : "form.visit_date")),
        h("span", { class: "control" }, visitDate)) : null,
      items, reasonRow, general, summary,
      editable ? h("button", { type: "submit", id: "save" }, t("form.save"))
        : allocated.size ? h("p", { id: "allocated-note" }, t("form.allocated_form"), " ", h("a", { href: `#/subjects/${subjectId}` }, t("randomise.title")))
        : h("p", {}, t(withdrawn ? "entries.withdrawn" : view.status === "locked" ? "form.locked" : "form.read_only"))),
    isEntry && entryId === "new" ? null : lifecycle(formUrl, view, () => route()),
    sae ? saeClockPanel(sae, formUrl, subject.data.site) : null,
    isEntry && editable && entryId !== "new" ? withdrawPanel(formUrl, view, subjectId) : null,
  ];
  if (may("query.read") && !isEntry) parts.push(await queryPanel(subjectId, { form: formId, visit: visitId }));
  render(...parts);
  applyConditions();
  const saved = state.savedWarnings;
  delete state.savedWarnings;
  if (saved && saved.hash === location.hash) {  // a new entry, just saved: its warnings at their items, as any save's
    const warnings = saved.warnings;
    showFindings([], warnings);
    const text = warnings.length ? t("form.saved_with_warnings", { n: warnings.length }) : t("form.saved");
    summary.replaceChildren(h("p", { class: warnings.length ? "warning" : "ok" }, text));
    announce(text);
  }
}

function lifecycle(formUrl, view, refresh) {
  const message = h("div", { "aria-live": "polite", id: "lifecycle-message" });
  const step = async (name, body) => {
    try {
      await api("POST", `${formUrl}/${name}`, body, { "If-Match": `W/"${view.version}"` });
      announce(t(`lifecycle.${name}ed`));
      await refresh();
      document.getElementById("form-messages")?.replaceChildren(h("p", { class: "ok" }, t(`lifecycle.${name}ed`)));
    } catch (error) {
      if (error.status === 401 && name === "sign") {
        message.replaceChildren(h("div", { class: "error", role: "alert" }, t("lifecycle.reauth_needed")),
          reauthentication(() => step(name, body)));  // confirmed: the same signature, with the same meaning
      } else message.replaceChildren(problem(error));
      announce(error.message);
    }
  };
  const buttons = [];
  if (may("form.verify") && view.status === "complete")
    buttons.push(h("button", { type: "button", id: "verify", onclick: () => step("verify", {}) }, t("lifecycle.verify")));
  if (may("form.sign") && view.status === "verified") {
    const meaning = h("input", { id: "meaning", value: t("lifecycle.default_meaning") });
    buttons.push(h("label", { for: "meaning" }, t("lifecycle.meaning"), " ", meaning),
      h("button", { type: "button", id: "sign", onclick: () => step("sign", { meaning: meaning.value }) }, t("lifecycle.sign")));
  }
  if (may("form.lock") && view.status === "signed")
    buttons.push(h("button", { type: "button", id: "lock", onclick: () => step("lock", {}) }, t("lifecycle.lock")));
  if (may("form.lock") && view.status === "locked") {
    const reason = h("input", { id: "unlock-reason" });
    buttons.push(h("label", { for: "unlock-reason" }, t("form.reason"), " ", reason),
      h("button", { type: "button", id: "unlock", onclick: () => step("unlock", { reason: reason.value }) }, t("lifecycle.unlock")));
  }
  if (!buttons.length) return h("div", {});
  return h("section", { class: "panel", "aria-labelledby": "lifecycle-title" }, h("h2", { id: "lifecycle-title" }, t("lifecycle.title")),
    h("div", { class: "row" }, buttons), message);
}

// An entry is never deleted: withdrawn as entered in error, with a reason; it stays listed, marked.
function withdrawPanel(formUrl, view, subjectId) {
  const reason = h("input", { id: "withdraw-reason", size: 40 });
  const message = h("div", { id: "withdraw-message", "aria-live": "polite" });
  return h("section", { class: "panel", id: "withdraw", "aria-labelledby": "withdraw-title" },
    h("h2", { id: "withdraw-title" }, t("entries.withdraw_title")),
    h("div", { class: "row" }, h("label", { for: "withdraw-reason" }, t("entries.withdraw_reason"), reason),
      h("button", { type: "button", class: "secondary", id: "withdraw-entry", onclick: async () => {
        try {
          await api("POST", `${formUrl}/withdraw`, { reason: reason.value.trim() || null }, { "If-Match": `W/"${view.version}"` });
          announce(t("entries.withdrawn_done"));
          location.hash = `#/subjects/${subjectId}`;
        } catch (error) {
          const findings = error.status === 422 ? (error.body.errors || []).map(e => e.message).join("; ") : "";
          message.replaceChildren(h("div", { class: "error", role: "alert" }, findings || error.message));
          announce(findings || error.message);
        }
      } }, t("entries.withdraw"))), message);
}

function reauthentication(then) {
  // 21 CFR 11.200: the signer proves who they are again. OpenID Connect: the provider asks again (prompt=login).
  if (state.session.method === "oidc")
    return h("a", { id: "reauth", href: `/web-auth/oidc/login?reauth=true` }, t("lifecycle.reauth_oidc"));
  return h("button", { type: "button", id: "reauth", onclick: async () => {
    const response = await fetch("/web-auth/dev-login", { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ role: state.session.user_roles[0], site: state.session.user_sites?.[0] || null, sub: state.session.sub }) });
    if (response.ok) { state.session = (await (await fetch("/web-auth/session")).json()); announce(t("lifecycle.reauth_done")); await then(); }
  } }, t("lifecycle.reauth_dev"));
}

// An item's history, from the audit trail (both doors): who changed it when, from what to what, and why.
async function itemHistory(button, note, subjectId, formId, visitId, item, site) {
  const open = note.querySelector(".item-history");
  if (open) { open.remove(); button.setAttribute("aria-expanded", "false"); return; }
  const params = new URLSearchParams({ form: formId, visit: visitId, item: item.id, limit: "500" });
  const { data } = await api("GET", `/api/v1/subjects/${encodeURIComponent(subjectId)}/audit?${params}`);
  const show = (value) => value === null || value === undefined ? "—" : typeof value === "object" ? JSON.stringify(value) : String(value);
  note.append(h("div", { class: "item-history" }, data.items.length
    ? h("table", {}, h("caption", {}, t("form.history_of", { label: item.label })),
        h("thead", {}, h("tr", {}, ["history.when", "history.who", "history.old", "history.new", "history.reason", "history.source"].map(k => h("th", { scope: "col" }, t(k))))),
        h("tbody", {}, data.items.map(e => h("tr", {}, h("td", {}, showMoment(e.at, site)), h("td", {}, `${e.who.sub} (${e.who.role})`),
          h("td", {}, show(e.old_value)), h("td", {}, show(e.new_value)), h("td", {}, e.reason || ""), h("td", {}, e.source)))))
    : h("p", {}, t("history.none"))));
  button.setAttribute("aria-expanded", "true");
}

async function raiseQuery(subjectId, formId, visitId, item) {
  const main = document.getElementById("main");
  const text = h("textarea", { id: "query-text", rows: 2 });
  const dialog = h("form", { class: "panel", id: "raise-query", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api("POST", `/api/v1/subjects/${encodeURIComponent(subjectId)}/queries`, { form_id: formId, visit_id: visitId, item_id: item.id, text: text.value });
      announce(t("queries.raised"));
      await route();
    } catch (error) { dialog.append(problem(error)); }
  } }, h("label", { for: "query-text" }, t("queries.raise_for", { label: item.label })), text,
     h("button", { type: "submit", id: "query-submit" }, t("queries.raise")));
  main.prepend(dialog);
  text.focus();
}

// -- monitors and data managers: open queries across the caller's sites --------------------------------
async function queriesPage() {
  const { data } = await api("GET", "/api/v1/queries?status=unresolved&limit=500");
  render(h("h1", {}, t("queries.open_title")),
    data.items.length ? h("ul", {}, data.items.map(q => h("li", {},
      h("a", { href: `#/subjects/${q.subject_id}${q.form_id ? `/forms/${q.form_id}/${q.visit_id}` : ""}` }, [q.form_id, q.visit_id, q.item_id].filter(Boolean).join(" / ") || q.subject_id),
      " — ", t(`queries.status.${q.status}`)))) : h("p", {}, t("queries.none")));
}

// -- sponsors and data managers: de-identified form CSVs ----------------------------------------------
async function exportsPage() {
  render(h("h1", {}, t("exports.title")), h("p", {}, t("exports.csv_note")),
    h("ul", { id: "csv-exports" }, state.study.forms.map(f => h("li", {},
      h("a", { href: `/api/v1/exports/forms/${encodeURIComponent(f.id)}.csv`, download: `${f.id}.csv` }, `${f.title} (${f.id}.csv)`)))));
}

(async function start() {
  const preferred = localStorage.getItem("ecrf.lang") || (navigator.language || "en").slice(0, 2);
  try {
    await loadMessages(["en", "zh"].includes(preferred) ? preferred : "en");
    await boot();
  } catch (error) {
    render(problem(error), h("p", {}, h("a", { href: "/" }, t("app.retry"))));  // never a silent "Loading…"
  }
})();
