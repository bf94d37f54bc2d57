// BerryChat web client: the HTTP API and the WebSocket connection (docs/protocol.md).
// The connection reconnects by itself with the backoff and close-code rules of §8 and keeps
// itself alive with application pings (§9). It knows nothing about the UI.

export class ApiError extends Error {
  constructor(status, code, message, retryable = false) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryable = retryable;
  }
}

// One HTTP API call; anything that is not a JSON object answer becomes an ApiError.
export async function api(method, path, body, token) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = 'Bearer ' + token;
  let res;
  try {
    res = await fetch('/api/v1' + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, 'network', 'Cannot reach the server. Check your connection.', true);
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!data || typeof data !== 'object' || Array.isArray(data)) {
    throw new ApiError(res.status, 'bad_response',
      `The server sent an unexpected answer (HTTP ${res.status}). Try again.`, true);
  }
  if (!res.ok) {
    const e = (data.error && typeof data.error === 'object') ? data.error : {};
    throw new ApiError(res.status, String(e.code || 'http_' + res.status),
      String(e.message || `Request failed (HTTP ${res.status})`), !!e.retryable);
  }
  return data;
}

export class FrameError extends Error {
  constructor(frame) {
    super(String(frame.message || frame.code || 'error'));
    this.code = String(frame.code || 'error');
    this.retryable = !!frame.retryable;
    this.frame = frame;
  }
}

export class Disconnected extends Error {
  constructor() {
    super('disconnected');
    this.code = 'disconnected';
    this.retryable = true;
  }
}

// Close codes after which we must not reconnect on our own (protocol.md §8).
const TERMINAL = {
  1000: 'The server ended the session.',
  1003: 'The server refused this client (unsupported data).',
  4403: 'This account is disabled.',
  4409: 'You signed in on this device somewhere else.',
  4426: 'This client is too old for the server. Reload the page.',
};

const rand = (lo, hi) => lo + Math.random() * (hi - lo);

// Events: 'state' (detail: {state, retryIn}), 'welcome' (hello ack), 'push' (server push),
// 'auth' (4401: log in again), 'terminal' (detail: {code, message}).
export class Socket extends EventTarget {
  constructor(token, { url } = {}) {
    super();
    this.token = token;
    this.url = url || (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    this.ws = null;
    this.state = 'idle';
    this.stopped = false;
    this.attempt = 0;
    this.nextId = 1;
    this.pending = new Map();
    this.retryTimer = null;
    this.retryAt = 0;
    this.lastRx = 0;
    this.pinging = false;
    this.heartbeat = { interval: 25, timeout: 60 };
    this.badFrames = 0;
    this._onOnline = () => this.reconnectNow();
    this._onOffline = () => this._drop('offline');
    this._onVisible = () => {
      if (document.visibilityState === 'visible' && this.state === 'waiting') this.reconnectNow();
    };
    this._tick = setInterval(() => this._checkAlive(), 5000);
    addEventListener('online', this._onOnline);
    addEventListener('offline', this._onOffline);
    document.addEventListener('visibilitychange', this._onVisible);
  }

  _setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, ...extra } }));
  }

  start() {
    this.stopped = false;
    this._connect();
  }

  stop(code = 1000) {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this._tick);
    removeEventListener('online', this._onOnline);
    removeEventListener('offline', this._onOffline);
    document.removeEventListener('visibilitychange', this._onVisible);
    if (this.ws) {
      try { this.ws.close(code); } catch { /* already closed */ }
    }
    this.ws = null;
    this._failPending();
    this._setState('stopped');
  }

  reconnectNow() {
    if (this.stopped || this.state === 'online' || this.state === 'connecting') return;
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    this._connect();
  }

  _connect() {
    clearTimeout(this.retryTimer);
    if (this.stopped) return;
    this._setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this._schedule(null);
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.lastRx = Date.now();
      this.request('hello', { v: 1, token: this.token }, 20000).then((ack) => {
        if (this.ws !== ws) return;
        this.attempt = 0;
        this.badFrames = 0;
        const hb = ack.heartbeat;
        if (hb && typeof hb.interval === 'number') this.heartbeat = hb;
        this._setState('online');
        this.dispatchEvent(new CustomEvent('welcome', { detail: ack }));
      }, () => { /* the close handler decides what happens next */ });
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastRx = Date.now();
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch {
        f = null;
      }
      if (!f || typeof f !== 'object' || typeof f.type !== 'string') {
        this.badFrames++;
        console.warn('BerryChat: ignored a malformed frame from the server');
        return;
      }
      if ((f.type === 'ack' || f.type === 'error') && f.id !== undefined) {
        const p = this.pending.get(f.id);
        if (p) {
          this.pending.delete(f.id);
          clearTimeout(p.timer);
          if (f.type === 'ack') p.resolve(f);
          else p.reject(new FrameError(f));
        }
        return;
      }
      if (f.type === 'ack' || f.type === 'error') return;
      try {
        this.dispatchEvent(new CustomEvent('push', { detail: f }));
      } catch (e) {
        console.error('BerryChat: a push could not be applied', e);
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this._failPending();
      if (!this.stopped) this._schedule(ev.code, ev.reason);
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  // Drop the current connection (network went away, heartbeat lost) and reconnect with backoff.
  _drop(why) {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    try { ws.close(4000, why); } catch { /* ignore */ }
    this._failPending();
    if (!this.stopped) this._schedule(1006);
  }

  _schedule(code, reason) {
    if (code === 4401) {
      this._setState('stopped');
      this.dispatchEvent(new CustomEvent('auth', { detail: { code, reason } }));
      return;
    }
    if (code in TERMINAL) {
      this._setState('stopped', { code });
      this.dispatchEvent(new CustomEvent('terminal', { detail: { code, message: TERMINAL[code] } }));
      return;
    }
    let delay;
    if (code === 1001) {
      delay = rand(0, 2);            // drain: reconnect at once, spread over 0-2 s
      this.attempt = 0;
    } else if (code === 4429) {
      delay = rand(30, 45);          // too many connections
    } else if (this.attempt === 0) {
      delay = rand(0.5, 1.5);
    } else {
      delay = Math.max(0.5, rand(0, Math.min(30, 2 ** this.attempt))); // full jitter
    }
    this.attempt++;
    this.retryAt = Date.now() + delay * 1000;
    this._setState('waiting', { retryIn: delay, code });
    this.retryTimer = setTimeout(() => this._connect(), delay * 1000);
  }

  _failPending() {
    const err = new Disconnected();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
  }

  // §9: browsers cannot see WebSocket pings, so ping when the server has been quiet.
  _checkAlive() {
    if (this.state !== 'online' || !this.ws || this.pinging) return;
    if (Date.now() - this.lastRx < (this.heartbeat.interval + 10) * 1000) return;
    this.pinging = true;
    const ws = this.ws;
    this.request('ping', {}, 10000).catch(() => {
      if (this.ws === ws) this._drop('heartbeat');
    }).finally(() => { this.pinging = false; });
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  // A request frame; resolves with its ack, rejects with FrameError or Disconnected.
  request(type, fields = {}, timeout = 20000) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(new Disconnected());
        return;
      }
      if (type !== 'hello' && type !== 'ping' && this.state !== 'online') {
        reject(new Disconnected());
        return;
      }
      const id = String(this.nextId++);
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Disconnected());
        if (type !== 'ping') this._drop('timeout');
      }, timeout);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ type, id, ...fields }));
    });
  }
}
