/*
 * journeys.js: the browser tracker. The collector serves it minified at /t.js (collector/tracker.py);
 * docs/tracker.md is the user's guide.
 *
 *   <script async src="https://COLLECTOR/t.js" data-key="jp_..."></script>
 *
 * What it does: a page view on load and on every history.pushState/popstate navigation; journeys.track,
 * journeys.identify, journeys.page; a first-party anonymous id (localStorage, a cookie where storage is
 * blocked); the page, referrer and UTM parameters in context.page and context.campaign (the collector's
 * ClickHouse table derives page_url, referrer and utm_* from those); channel "web" on every event.
 * Events are batched (sent when data-batch-size are queued or data-flush-ms after the first) and, when
 * the page is hidden or left, sent with navigator.sendBeacon.
 *
 * Transport: POST /v1/batch with the key in the body (writeKey) and Content-Type text/plain. That makes
 * every send a CORS "simple" request: no preflight, and sendBeacon (which cannot set headers) works too.
 *
 * Rules for this file (the minifier relies on them and refuses a source that breaks them): comments on
 * lines of their own, no template literals, no strings continued over lines. ES5, no dependencies.
 */
(function (window, document) {
  "use strict";

  var VERSION = "1.0.0";
  var PREFIX = "jny_";
  // sendBeacon and fetch keepalive may carry 64 KB in flight (UTF-8 bytes); stay under it per request.
  var MAX_REQUEST_BYTES = 60000;
  // Events kept while the collector is unreachable; the oldest are dropped beyond it.
  var MAX_QUEUE = 1000;
  var MAX_BACKOFF_MS = 60000;
  var YEAR_S = 31536000;
  var UTM = {utm_source: "source", utm_medium: "medium", utm_campaign: "name", utm_term: "term", utm_content: "content"};
  var METHODS = ["track", "identify", "page", "optOut", "optIn", "reset", "flush"];

  var existing = window.journeys;
  if (existing && existing.loaded) {
    return;
  }

  function warn(message) {
    if (window.console && window.console.warn) {
      window.console.warn("journeys: " + message);
    }
  }

  var script = document.currentScript || document.querySelector("script[data-key]");
  var key = script && script.getAttribute("data-key");
  if (!key) {
    warn("no data-key on the script tag: nothing will be sent");
    return;
  }

  function attribute(name, fallback) {
    var value = script.getAttribute("data-" + name);
    return value === null ? fallback : value;
  }

  function number(name, fallback, low, high) {
    var value = parseInt(attribute(name, ""), 10);
    return isNaN(value) ? fallback : Math.min(high, Math.max(low, value));
  }

  var host = attribute("host", "");
  if (!host && script.src) {
    host = new URL(script.src, window.location.href).origin;
  }
  if (!host) {
    warn("no data-host and no script src: nothing will be sent");
    return;
  }
  var endpoint = host.replace(/\/+$/, "") + "/v1/batch";
  var batchSize = number("batch-size", 20, 1, 100);
  var flushMs = number("flush-ms", 2000, 0, 600000);
  var autoPage = attribute("auto-page", "true") !== "false";
  var cookieDomain = attribute("cookie-domain", "");

  // ---- first-party storage: localStorage, or a cookie where storage is blocked ----

  function cookieGet(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) {
        try {
          return decodeURIComponent(parts[i].slice(eq + 1));
        } catch (e) {
          return null;
        }
      }
    }
    return null;
  }

  function cookieSet(name, value, maxAge) {
    var cookie = name + "=" + encodeURIComponent(value) + "; path=/; max-age=" + maxAge + "; SameSite=Lax";
    if (cookieDomain) {
      cookie += "; domain=" + cookieDomain;
    }
    if (window.location.protocol === "https:") {
      cookie += "; Secure";
    }
    document.cookie = cookie;
  }

  function load(name) {
    var value = null;
    try {
      value = window.localStorage.getItem(PREFIX + name);
    } catch (e) {
      value = null;
    }
    return value === null ? cookieGet(PREFIX + name) : value;
  }

  function save(name, value) {
    try {
      window.localStorage.setItem(PREFIX + name, value);
      return;
    } catch (e) {
      cookieSet(PREFIX + name, value, YEAR_S);
    }
  }

  function forget(name) {
    try {
      window.localStorage.removeItem(PREFIX + name);
    } catch (e) {
      // storage blocked: the value, if any, is in the cookie
    }
    if (cookieGet(PREFIX + name) !== null) {
      cookieSet(PREFIX + name, "", 0);
    }
  }

  function uuid() {
    var crypto = window.crypto;
    if (crypto && crypto.randomUUID) {
      return crypto.randomUUID();
    }
    var bytes = new Uint8Array(16);
    var i;
    if (crypto && crypto.getRandomValues) {
      crypto.getRandomValues(bytes);
    } else {
      for (i = 0; i < 16; i++) {
        bytes[i] = Math.floor(Math.random() * 256);
      }
    }
    bytes[6] = (bytes[6] & 15) | 64;
    bytes[8] = (bytes[8] & 63) | 128;
    var hex = "";
    for (i = 0; i < 16; i++) {
      hex += (bytes[i] + 256).toString(16).slice(1) + (i === 3 || i === 5 || i === 7 || i === 9 ? "-" : "");
    }
    return hex;
  }

  // ---- state ----

  var stored = load("optout");
  var state = {
    optedOut: stored === null ? script.hasAttribute("data-opt-out") : stored === "1",
    userId: load("uid"),
    anonymousId: null,
    // The referrer of the next page view: the document's at first, the previous URL after SPA navigation.
    referrer: document.referrer,
    lastUrl: null,
    pageSuppressed: false
  };
  // Serialized events waiting to be sent; left over from the previous page if its beacon failed.
  var queue = [];
  var timer = null;
  var sending = false;
  var backoffMs = 0;
  var retryAt = 0;

  function anonymousId() {
    if (!state.anonymousId) {
      state.anonymousId = load("aid");
      if (!state.anonymousId) {
        state.anonymousId = uuid();
        save("aid", state.anonymousId);
      }
    }
    return state.anonymousId;
  }

  function currentUrl() {
    var href = window.location.href;
    var hash = href.indexOf("#");
    return hash === -1 ? href : href.slice(0, hash);
  }

  function campaign() {
    var found = null;
    var params;
    try {
      params = new URLSearchParams(window.location.search);
    } catch (e) {
      return null;
    }
    for (var name in UTM) {
      if (UTM.hasOwnProperty(name) && params.get(name)) {
        found = found || {};
        found[UTM[name]] = params.get(name);
      }
    }
    return found;
  }

  function pageInfo() {
    return {
      url: currentUrl(),
      path: window.location.pathname,
      search: window.location.search,
      title: document.title,
      referrer: state.referrer
    };
  }

  function context() {
    var ctx = {
      page: pageInfo(),
      library: {name: "journeys.js", version: VERSION},
      userAgent: window.navigator.userAgent,
      locale: window.navigator.language,
      screen: {width: window.screen.width, height: window.screen.height}
    };
    var utm = campaign();
    if (utm) {
      ctx.campaign = utm;
    }
    try {
      ctx.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    } catch (e) {
      // no Intl: no time zone
    }
    return ctx;
  }

  function plainObject(value) {
    return value && typeof value === "object" && !Array.isArray(value) ? value : {};
  }

  // ---- queue and delivery ----

  function enqueue(event) {
    if (state.optedOut) {
      return;
    }
    event.messageId = uuid();
    event.anonymousId = anonymousId();
    if (state.userId) {
      event.userId = state.userId;
    }
    event.channel = "web";
    event.timestamp = new Date().toISOString();
    event.context = context();
    var text;
    try {
      text = JSON.stringify(event);
    } catch (e) {
      warn("event not sent, it cannot be serialized: " + e);
      return;
    }
    if (utf8Length(text) > MAX_REQUEST_BYTES - 200) {
      warn("event not sent, it is over " + MAX_REQUEST_BYTES + " bytes");
      return;
    }
    queue.push(text);
    if (queue.length > MAX_QUEUE) {
      queue.splice(0, queue.length - MAX_QUEUE);
    }
    if (queue.length >= batchSize) {
      flush();
    } else {
      schedule(flushMs);
    }
  }

  function schedule(delay) {
    if (timer === null) {
      timer = window.setTimeout(flush, delay);
    }
  }

  // Bytes on the wire: a character of a JS string is 1 to 3 bytes of UTF-8.
  function utf8Length(text) {
    if (window.TextEncoder) {
      return new TextEncoder().encode(text).length;
    }
    return text.length * 3;
  }

  // The queue's head that fits in one request (at least one event).
  function take() {
    var count = 0;
    var bytes = 200;
    while (count < queue.length) {
      var size = utf8Length(queue[count]) + 1;
      if (count > 0 && bytes + size > MAX_REQUEST_BYTES) {
        break;
      }
      bytes += size;
      count++;
    }
    return queue.splice(0, count);
  }

  function body(events) {
    return "{\"batch\":[" + events.join(",") + "],\"sentAt\":" + JSON.stringify(new Date().toISOString()) +
      ",\"writeKey\":" + JSON.stringify(key) + "}";
  }

  function retryLater(events, retryAfter) {
    queue = events.concat(queue);
    var seconds = parseInt(retryAfter || "", 10);
    backoffMs = seconds > 0 ? seconds * 1000 : Math.min(MAX_BACKOFF_MS, backoffMs ? backoffMs * 2 : 1000);
    retryAt = Date.now() + backoffMs;
  }

  function flush() {
    window.clearTimeout(timer);
    timer = null;
    if (sending || !queue.length || state.optedOut) {
      return;
    }
    if (Date.now() < retryAt) {
      schedule(retryAt - Date.now());
      return;
    }
    if (!window.fetch) {
      flushWithBeacon();
      return;
    }
    var events = take();
    sending = true;
    window.fetch(endpoint, {
      method: "POST",
      body: body(events),
      headers: {"Content-Type": "text/plain"},
      credentials: "omit",
      keepalive: true
    }).then(function (response) {
      if (response.status === 429 || response.status >= 500) {
        retryLater(events, response.headers.get("Retry-After"));
      } else if (!response.ok) {
        // 4xx other than 429 will not get better by retrying: say why once, and drop.
        warn("collector refused " + events.length + " events: HTTP " + response.status);
      } else {
        backoffMs = 0;
      }
    }, function () {
      // Offline, or a CORS refusal (an origin the project does not list): retry with backoff.
      retryLater(events, null);
    }).then(function () {
      sending = false;
      if (queue.length) {
        schedule(Math.max(0, retryAt - Date.now()));
      }
    });
  }

  // The page is being hidden or left: hand everything to the browser, which sends beacons even after
  // the page is gone. What a beacon cannot take is kept for the next page of this site.
  function flushWithBeacon() {
    window.clearTimeout(timer);
    timer = null;
    if (state.optedOut) {
      return;
    }
    while (queue.length) {
      var events = take();
      var sent = false;
      try {
        sent = window.navigator.sendBeacon(endpoint, body(events));
      } catch (e) {
        sent = false;
      }
      if (!sent) {
        queue = events.concat(queue);
        break;
      }
    }
    if (queue.length) {
      try {
        window.localStorage.setItem(PREFIX + "q", JSON.stringify(queue));
      } catch (e) {
        // storage blocked or full: these events are lost with the page
      }
    }
  }

  function restoreQueue() {
    var saved = null;
    try {
      saved = window.localStorage.getItem(PREFIX + "q");
      window.localStorage.removeItem(PREFIX + "q");
    } catch (e) {
      saved = null;
    }
    if (saved && !state.optedOut) {
      try {
        queue = JSON.parse(saved).concat(queue);
      } catch (e) {
        queue = [];
      }
    }
  }

  // ---- the API ----

  var api = {loaded: true, version: VERSION};

  api.track = function (event, properties) {
    if (typeof event !== "string" || !event) {
      warn("track(event, properties): event must be a non-empty string");
      return;
    }
    enqueue({type: "track", event: event, properties: plainObject(properties)});
  };

  api.identify = function (userId, traits) {
    if (userId && typeof userId === "object") {
      traits = userId;
      userId = state.userId;
    }
    if ((typeof userId !== "string" && typeof userId !== "number") || userId === "") {
      warn("identify(userId, traits): userId must be a non-empty string or a number");
      return;
    }
    if (!state.optedOut) {
      state.userId = String(userId);
      save("uid", state.userId);
    }
    enqueue({type: "identify", traits: plainObject(traits)});
  };

  api.page = function (name, properties) {
    if (name && typeof name === "object") {
      properties = name;
      name = undefined;
    }
    var info = pageInfo();
    var props = plainObject(properties);
    for (var field in info) {
      if (info.hasOwnProperty(field) && !(field in props)) {
        props[field] = info[field];
      }
    }
    var event = {type: "page", properties: props};
    if (typeof name === "string" && name) {
      event.name = name;
    }
    state.lastUrl = info.url;
    enqueue(event);
  };

  // Consent: opting out drops what is queued, forgets the ids and stores only the choice itself.
  api.optOut = function () {
    state.optedOut = true;
    save("optout", "1");
    queue = [];
    window.clearTimeout(timer);
    timer = null;
    forget("q");
    forget("aid");
    forget("uid");
    state.anonymousId = null;
    state.userId = null;
  };

  api.optIn = function () {
    state.optedOut = false;
    save("optout", "0");
    if (state.pageSuppressed) {
      state.pageSuppressed = false;
      autoPageView();
    }
  };

  api.isOptedOut = function () {
    return state.optedOut;
  };

  // Logout: later events belong to a new anonymous visitor.
  api.reset = function () {
    forget("uid");
    forget("aid");
    state.userId = null;
    state.anonymousId = null;
  };

  api.anonymousId = function () {
    return state.optedOut ? null : anonymousId();
  };

  api.flush = flush;

  function autoPageView() {
    if (state.optedOut) {
      state.pageSuppressed = true;
      state.lastUrl = currentUrl();
      return;
    }
    api.page();
  }

  // An SPA navigation: a page view once the URL (without its #fragment) really changed. A tick later,
  // so the app has had a chance to set the new title.
  function navigated() {
    window.setTimeout(function () {
      var url = currentUrl();
      if (url === state.lastUrl) {
        return;
      }
      state.referrer = state.lastUrl || state.referrer;
      autoPageView();
    }, 0);
  }

  // ---- start ----

  restoreQueue();
  var pending = existing && typeof existing.length === "number" ? Array.prototype.slice.call(existing) : [];
  window.journeys = api;

  // Calls made before the script loaded, replayed: consent first, then the page view, then the rest.
  function replay(consent) {
    for (var i = 0; i < pending.length; i++) {
      var call = pending[i];
      var method = call && call[0];
      var isConsent = method === "optOut" || method === "optIn";
      if (isConsent === consent && METHODS.indexOf(method) !== -1) {
        api[method].apply(api, Array.prototype.slice.call(call, 1));
      }
    }
  }

  replay(true);
  if (autoPage) {
    autoPageView();
    var pushState = window.history.pushState;
    window.history.pushState = function () {
      var result = pushState.apply(this, arguments);
      navigated();
      return result;
    };
    window.addEventListener("popstate", navigated);
  }
  replay(false);
  if (queue.length) {
    schedule(flushMs);
  }

  window.addEventListener("pagehide", flushWithBeacon);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") {
      flushWithBeacon();
    }
  });
})(window, document);
