/*
 * Tante Emma snippet: page, product, cart, scroll and exit-intent tracking, and on-site decisions.
 * Plain JavaScript, no dependencies. Events go to /v1/batch (Segment HTTP Tracking API, write key as
 * the HTTP Basic username); placements found on the page are filled from /v1/decide.
 *
 *   <script src="https://emma.example.com/static/emma.js" data-write-key="emma_w_..." async></script>
 *   <script>window.emmaSettings = {userId: "c-1"}</script>   (optional, before the snippet)
 *
 * Calls before it has loaded: window.emma = window.emma || []; emma.push(["track", "Event", {...}]).
 * Markup: data-emma-product="SKU" (product view), data-emma-placement="home|product_page|cart" with
 * data-emma-sku / data-emma-cart="SKU,SKU" (a widget is rendered inside). See docs/onsite.md.
 */
(function (window, document) {
  "use strict";
  if (window.emma && window.emma.version) { return; }

  var VERSION = "1.1.0";
  var AID = "emma_aid", UID = "emma_uid", CART = "emma_cart", EXIT = "emma_exit_shown";
  var LABELS = {
    de: { copy: "Code kopieren", copied: "Kopiert", close: "Schließen", why: "Warum sehe ich das?" },
    en: { copy: "Copy code", copied: "Copied", close: "Close", why: "Why am I seeing this?" }
  };
  var cfg = { host: "", writeKey: "", userId: null, anonymousId: null, flushInterval: 1000, batchSize: 20,
              autoPage: true, scroll: true, exitIntent: true, placements: true, locale: null };
  var queue = [], timer = null, started = false, scrollSent = {}, exitDone = false, sending = Promise.resolve();

  // --- storage: first-party localStorage with a cookie as fallback -----------------------------
  function store(key, value) {
    try { if (value === null) { window.localStorage.removeItem(key); } else { window.localStorage.setItem(key, value); } }
    catch (e) { /* private mode: the cookie still works */ }
    var expires = value === null ? "Thu, 01 Jan 1970 00:00:00 GMT" : new Date(Date.now() + 365 * 864e5).toUTCString();
    document.cookie = key + "=" + encodeURIComponent(value || "") + "; expires=" + expires + "; path=/; SameSite=Lax";
  }
  function load(key) {
    try { var v = window.localStorage.getItem(key); if (v) { return v; } } catch (e) { /* fall through */ }
    var m = document.cookie.match(new RegExp("(?:^|; )" + key + "=([^;]*)"));
    return m && m[1] ? decodeURIComponent(m[1]) : null;
  }
  function session(key, value) {
    try {
      if (value === undefined) { return window.sessionStorage.getItem(key); }
      window.sessionStorage.setItem(key, value);
    } catch (e) { return null; }
    return value;
  }
  function uuid() {
    if (window.crypto && window.crypto.randomUUID) { return window.crypto.randomUUID(); }
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0; return (c === "x" ? r : (r & 3 | 8)).toString(16);
    });
  }
  function anonymousId() {
    var id = cfg.anonymousId || load(AID);
    if (!id) { id = uuid(); }
    if (id !== load(AID)) { store(AID, id); }
    cfg.anonymousId = id;
    return id;
  }

  // --- sending -------------------------------------------------------------------------------------
  function headers() {
    return { "Authorization": "Basic " + window.btoa(cfg.writeKey + ":"), "Content-Type": "application/json" };
  }
  function post(path, body, keepalive) {
    return window.fetch(cfg.host + path, { method: "POST", mode: "cors", credentials: "omit", headers: headers(),
                                           body: JSON.stringify(body), keepalive: !!keepalive });
  }
  function pageContext() {
    return { library: { name: "emma.js", version: VERSION }, locale: cfg.locale || navigator.language,
             userAgent: navigator.userAgent,
             page: { url: location.href, path: location.pathname, referrer: document.referrer, title: document.title } };
  }
  function message(type, fields) {
    var m = { type: type, messageId: uuid(), originalTimestamp: new Date().toISOString(),
              anonymousId: anonymousId(), context: pageContext() };
    if (cfg.userId) { m.userId = cfg.userId; }
    for (var k in fields) { if (Object.prototype.hasOwnProperty.call(fields, k)) { m[k] = fields[k]; } }
    return m;
  }
  function enqueue(m, now) {
    queue.push(m);
    if (now || queue.length >= cfg.batchSize) { flush(now); }
    else if (!timer) { timer = window.setTimeout(function () { flush(false); }, cfg.flushInterval); }
  }
  function flush(keepalive) {
    if (timer) { window.clearTimeout(timer); timer = null; }
    // Resolves when everything queued so far has been sent (or has failed and gone back to the queue),
    // including a batch already on its way.
    if (!queue.length || !cfg.writeKey) { return sending; }
    var batch = queue.splice(0, queue.length);
    // messageIds make a resend harmless: what failed goes back to the queue for the next flush.
    var sent = post("/v1/batch", { batch: batch, sentAt: new Date().toISOString() }, keepalive).then(function (r) {
      if (r.status >= 500 || r.status === 429) { throw new Error("HTTP " + r.status); }
    }).catch(function () {
      queue = batch.concat(queue).slice(-500);
      if (!timer) { timer = window.setTimeout(function () { flush(false); }, cfg.flushInterval * 5); }
    });
    sending = Promise.all([sending, sent]).then(function () {});
    return sending;
  }

  // --- the cart this browser knows (for the cart and exit-intent placements) -------------------------
  function cartSkus() {
    var el = document.querySelector("[data-emma-cart]");
    if (el) { return el.getAttribute("data-emma-cart").split(",").map(function (s) { return s.trim(); }).filter(Boolean); }
    try { return JSON.parse(session(CART) || "[]"); } catch (e) { return []; }
  }
  function noteCart(event, props) {
    var skus = cartSkus(), sku = props && (props.sku || props.product_id);
    if (event === "Product Added" && sku && skus.indexOf(String(sku)) < 0) { skus.push(String(sku)); }
    else if (event === "Product Removed" && sku) { skus = skus.filter(function (s) { return s !== String(sku); }); }
    else if (event === "Order Completed") { skus = []; }
    else { return; }
    session(CART, JSON.stringify(skus));
  }

  // --- public API ----------------------------------------------------------------------------------
  function track(event, properties, options) {
    noteCart(event, properties || {});
    enqueue(message("track", { event: event, properties: properties || {} }), options && options.now);
  }
  function page(name, properties) {
    var props = { url: location.href, path: location.pathname, referrer: document.referrer, title: document.title };
    for (var k in (properties || {})) { if (Object.prototype.hasOwnProperty.call(properties, k)) { props[k] = properties[k]; } }
    enqueue(message("page", { name: name || document.title, properties: props }));
  }
  function identify(userId, traits) {
    if (userId) { cfg.userId = String(userId); store(UID, cfg.userId); }
    enqueue(message("identify", { traits: traits || {} }));
  }
  function productViewed(properties) { track("Product Viewed", properties); }
  function reset() { cfg.userId = null; cfg.anonymousId = null; store(UID, null); store(AID, null); anonymousId(); }

  function decide(placement, context) {
    var body = { placement: placement, anonymousId: anonymousId(), context: context || {} };
    if (cfg.userId) { body.userId = cfg.userId; }
    if (!body.context.locale) { body.context.locale = cfg.locale || navigator.language; }
    if (!body.context.url) { body.context.url = location.href; }
    // This page's events (the product view, a cart add) go first: a tactic that reacts to them in real time
    // (in_session_upsell) then answers in this very decision, not on the next page.
    return flush().then(function () { return post("/v1/decide", body); }).then(function (r) {
      if (!r.ok) { throw new Error("decide: HTTP " + r.status); }
      return r.json();
    });
  }

  // --- rendering -----------------------------------------------------------------------------------
  var CSS = ".emma-widget{font:inherit;margin:1em 0}.emma-heading{font-size:1.1em;margin:.2em 0}" +
    ".emma-reason{color:#666;font-size:.8em;margin:0 0 .5em}.emma-items{display:flex;gap:1em;list-style:none;padding:0;margin:0;flex-wrap:wrap}" +
    ".emma-item a{display:block;width:9em;color:inherit;text-decoration:none}.emma-item img{width:100%;height:auto;display:block}" +
    ".emma-price{display:block;font-weight:bold}.emma-overlay{position:fixed;inset:0;background:rgba(0,0,0,.45);display:flex;" +
    "align-items:center;justify-content:center;z-index:2147483647}.emma-dialog{background:#fff;color:#222;max-width:26em;padding:1.5em;" +
    "border-radius:8px;box-shadow:0 4px 24px rgba(0,0,0,.3);position:relative;text-align:center}.emma-code{display:block;font-size:1.6em;" +
    "letter-spacing:.08em;margin:.5em 0}.emma-close{position:absolute;top:.3em;right:.5em;border:0;background:none;font-size:1.4em;cursor:pointer}" +
    ".emma-copy{padding:.5em 1em;cursor:pointer}";
  function styles() {
    if (document.getElementById("emma-style")) { return; }
    var s = document.createElement("style"); s.id = "emma-style"; s.textContent = CSS;
    (document.head || document.documentElement).appendChild(s);
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function safeUrl(u) { return typeof u === "string" && /^https?:\/\//i.test(u) ? u : null; }

  function renderWidget(target, decision) {
    styles();
    var root = el("div", "emma-widget");
    root.setAttribute("data-emma-decision", decision.decision_id);
    decision.blocks.forEach(function (block) {
      var box = el("section", "emma-block");
      box.setAttribute("data-emma-kind", block.kind);
      box.appendChild(el("h3", "emma-heading", block.heading));
      var why = el("p", "emma-reason", block.reason);
      why.title = (LABELS[decision.locale] || LABELS.en).why;
      box.appendChild(why);
      var list = el("ul", "emma-items");
      block.items.forEach(function (item, i) {
        var li = el("li", "emma-item"), a = el("a");
        a.setAttribute("data-emma-sku", item.sku);
        var href = safeUrl(item.url);
        if (href) { a.href = href; }
        var img = safeUrl(item.image_url);
        if (img) { var pic = el("img"); pic.src = img; pic.alt = ""; pic.loading = "lazy"; a.appendChild(pic); }
        a.appendChild(el("span", "emma-name", item.name));
        if (item.price_text) { a.appendChild(el("span", "emma-price", item.price_text)); }
        a.addEventListener("click", function () {
          track("Product Clicked", { sku: item.sku, product_id: item.sku, name: item.name, price: item.price,
                                     currency: item.currency, position: i + 1, list_id: decision.placement,
                                     decision_id: decision.decision_id, block: block.kind }, { now: true });
        });
        li.appendChild(a);
        list.appendChild(li);
      });
      box.appendChild(list);
      root.appendChild(box);
    });
    target.textContent = "";
    target.appendChild(root);
    return root;
  }

  function renderOverlay(decision) {
    var c = decision.coupon, labels = LABELS[decision.locale] || LABELS.en;
    styles();
    var overlay = el("div", "emma-overlay"), box = el("div", "emma-dialog");
    overlay.setAttribute("data-emma-decision", decision.decision_id);
    box.setAttribute("role", "dialog");
    box.setAttribute("aria-modal", "true");
    var close = el("button", "emma-close", "×");
    close.setAttribute("aria-label", labels.close);
    close.addEventListener("click", function () { overlay.remove(); });
    overlay.addEventListener("click", function (e) { if (e.target === overlay) { overlay.remove(); } });
    box.appendChild(close);
    box.appendChild(el("h2", "emma-heading", c.heading));
    box.appendChild(el("p", "emma-text", c.text));
    box.appendChild(el("strong", "emma-code", c.code));
    var copy = el("button", "emma-copy", labels.copy);
    copy.addEventListener("click", function () {
      track("Promotion Clicked", { promotion_id: decision.decision_id, name: c.heading, creative: "exit_intent",
                                   coupon: c.code, decision_id: decision.decision_id }, { now: true });
      var done = function () { copy.textContent = labels.copied; };
      if (navigator.clipboard && navigator.clipboard.writeText) { navigator.clipboard.writeText(c.code).then(done, done); }
      else { done(); }
    });
    box.appendChild(copy);
    box.appendChild(el("p", "emma-reason", c.reason));
    overlay.appendChild(box);
    document.body.appendChild(overlay);
    track("Promotion Viewed", { promotion_id: decision.decision_id, name: c.heading, creative: "exit_intent",
                                coupon: c.code, decision_id: decision.decision_id });
    return overlay;
  }

  function fillPlacements() {
    var nodes = document.querySelectorAll("[data-emma-placement]");
    Array.prototype.forEach.call(nodes, function (node) {
      var placement = node.getAttribute("data-emma-placement");
      if (placement === "exit_intent") { return; }
      var ctx = {};
      var sku = node.getAttribute("data-emma-sku");
      if (sku) { ctx.sku = sku; }
      var cart = cartSkus();
      if (cart.length) { ctx.cart_skus = cart; }
      decide(placement, ctx).then(function (d) {
        if (d.blocks && d.blocks.length) { renderWidget(node, d); }
      }).catch(function () { /* the shop page works without the widget */ });
    });
  }

  // --- automatic tracking ----------------------------------------------------------------------------
  function trackProducts() {
    var nodes = document.querySelectorAll("[data-emma-product]");
    Array.prototype.forEach.call(nodes, function (node) {
      var props = { sku: node.getAttribute("data-emma-product") };
      var name = node.getAttribute("data-emma-name"), price = node.getAttribute("data-emma-price");
      if (name) { props.name = name; }
      if (price && !isNaN(parseFloat(price))) { props.price = parseFloat(price); }
      productViewed(props);
    });
  }
  function onScroll() {
    var doc = document.documentElement;
    var height = Math.max(doc.scrollHeight, document.body ? document.body.scrollHeight : 0);
    var seen = (window.scrollY + window.innerHeight) / Math.max(height, 1);
    [25, 50, 75, 100].forEach(function (depth) {
      if (!scrollSent[depth] && seen >= (depth === 100 ? 0.99 : depth / 100)) {
        scrollSent[depth] = true;
        track("Scroll Depth Reached", { depth: depth, path: location.pathname });
      }
    });
  }
  function onMouseOut(e) {
    // Desktop exit intent: the pointer leaves the window through its top edge (towards tabs and address bar).
    if (exitDone || e.relatedTarget || e.toElement || e.clientY > 0) { return; }
    exitDone = true;
    track("Exit Intent", { path: location.pathname }, { now: true });
    if (session(EXIT)) { return; }
    var ctx = {}, cart = cartSkus();
    if (cart.length) { ctx.cart_skus = cart; }
    decide("exit_intent", ctx).then(function (d) {
      if (d.coupon) { session(EXIT, "1"); renderOverlay(d); }
    }).catch(function () { /* nothing to show */ });
  }

  function init(options) {
    var k;
    for (k in (options || {})) { if (Object.prototype.hasOwnProperty.call(options, k)) { cfg[k] = options[k]; } }
    cfg.host = String(cfg.host || "").replace(/\/+$/, "");
    if (cfg.userId) { cfg.userId = String(cfg.userId); store(UID, cfg.userId); } else { cfg.userId = load(UID); }
    anonymousId();
    if (started) { return api; }
    started = true;
    var go = function () {
      if (cfg.autoPage) { page(); }
      trackProducts();
      if (cfg.placements) { fillPlacements(); }
    };
    if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", go); } else { go(); }
    if (cfg.scroll) {
      var ticking = false;
      window.addEventListener("scroll", function () {
        if (ticking) { return; }
        ticking = true;
        window.requestAnimationFrame(function () { ticking = false; onScroll(); });
      }, { passive: true });
    }
    if (cfg.exitIntent && !(window.matchMedia && window.matchMedia("(pointer: coarse)").matches)) {
      document.addEventListener("mouseout", onMouseOut);
    }
    window.addEventListener("pagehide", function () { flush(true); });
    document.addEventListener("visibilitychange", function () { if (document.visibilityState === "hidden") { flush(true); } });
    return api;
  }

  // Calls made before the snippet loaded: window.emma = window.emma || []; emma.push(["track", "...", {...}])
  var queued = Array.isArray(window.emma) ? window.emma : [];

  var api = { version: VERSION, init: init, track: track, page: page, identify: identify,
              productViewed: productViewed, decide: decide, flush: flush, reset: reset,
              renderWidget: renderWidget, renderOverlay: renderOverlay,
              anonymousId: function () { return anonymousId(); }, userId: function () { return cfg.userId; } };
  window.emma = api;

  // Configuration from the script tag (data-host, data-write-key, data-user-id) and window.emmaSettings.
  var script = document.currentScript, settings = window.emmaSettings || {}, auto = {};
  if (script) {
    var src = script.getAttribute("src") || "";
    auto.host = script.getAttribute("data-host") || (src.indexOf("/static/emma.js") > 0 ? src.split("/static/emma.js")[0] : "");
    if (script.getAttribute("data-write-key")) { auto.writeKey = script.getAttribute("data-write-key"); }
    if (script.getAttribute("data-user-id")) { auto.userId = script.getAttribute("data-user-id"); }
  }
  for (var key in settings) { if (Object.prototype.hasOwnProperty.call(settings, key)) { auto[key] = settings[key]; } }
  if (auto.writeKey) { init(auto); }
  queued.forEach(function (call) {
    if (call && typeof api[call[0]] === "function") { api[call[0]].apply(api, call.slice(1)); }
  });
})(window, document);
