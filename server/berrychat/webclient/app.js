// BerryChat web client. No build step: plain ES modules, DOM APIs, textContent only (no HTML
// from the network ever reaches innerHTML).
//
// Local state mirrors the server's stream (docs/protocol.md §4, §11, §12): per conversation a
// summary (last_seq, read_seq, last_message, unread = last_seq - read_seq) and, for a
// conversation that was opened, its loaded events keyed by seq. `low..high` is the gap-free
// range held; pushes with a seq above high+1 leave a hole that is filled with
// `history after=high`. After every (re)connect: `sync` with our cursors, then pull ranges by
// seq for the loaded conversations that changed. Everything is keyed by (conv, seq), so a
// push that also arrives through history is applied once.

import { el } from './dom.js';
import { api, ApiError, Socket } from './net.js';
import { callText, onCallPush, setupCalls, updateCallButtons } from './calls.js';
import { botBadge, onStreamPush, setupAssistant, streamDone } from './assistant.js';
import { attachmentEl, mediaLabel, setupMedia, TEXTLIKE } from './media.js';

const $ = (id) => document.getElementById(id);
const EMOJI = ('😀 😂 😊 😍 🤔 😎 😢 😡 👍 👎 👏 🙏 💪 🎉 ❤️ 🔥 ✅ ❌ ⭐ ☕ 🍓 🥧 🚀 👀 ' +
  '🙌 😴 🤝 💡 📌 🕒 🍕 🎂').split(' ');
const QUICK = ['👍', '❤️', '😂', '😮', '😢', '🙏'];
const PAGE = 50;
const FILL_PAGE = 200;

// ---- state ------------------------------------------------------------------------------
const S = {
  session: null, // {token, user, device_id}
  me: 0,
  sock: null,
  limits: { max_text_chars: 4000, recall_window_seconds: 120, edit_window_seconds: 86400 },
  convs: new Map(),
  users: new Map(),
  presence: new Map(),
  presenceOn: true,
  typing: new Map(), // conv -> Map(user -> expires)
  current: 0,
  replyTo: 0,
  editing: 0,
  cidN: 0,
  synced: false,
  receiptTimers: new Map(),
};
window.__berry = S; // for debugging and for the browser tests' assertions

function newConv(id) {
  return {
    id, kind: 'direct', title: '', peer: null, last_seq: 0, read_seq: 0, delivered_seq: 0,
    updated_at: 0, member_count: 0, role: 'member', last_message: null, members: null,
    loaded: false, loading: null, msgs: new Map(), low: 0, high: 0, moreBefore: false,
    filling: false, pending: new Map(), sentDelivered: 0, sentRead: 0,
    kinds: new Map(), // seq -> 1 if the event counts as unread (a live text by someone else)
  };
}
function conv(id) {
  let c = S.convs.get(id);
  if (!c) {
    c = newConv(id);
    S.convs.set(id, c);
  }
  return c;
}
// Unread: text messages from others after my read cursor, when every event in that range is
// known here; otherwise the protocol's last_seq - read_seq (which also counts edits, reactions).
function unread(c) {
  const n = c.last_seq - c.read_seq;
  if (n <= 0) return 0;
  if (n > 500) return n;
  let count = 0;
  for (let s = c.read_seq + 1; s <= c.last_seq; s++) {
    const k = c.kinds.get(s);
    if (k === undefined) return n;
    count += k;
  }
  return count;
}
function noteKind(c, ev) {
  c.kinds.set(ev.seq, ev.kind === 'text' && ev.from !== S.me && !ev.recalled ? 1 : 0);
  if (ev.kind === 'recall' && c.kinds.has(ev.target)) c.kinds.set(ev.target, 0);
  if (c.kinds.size > 2000) {
    for (const k of c.kinds.keys()) if (k <= c.read_seq) c.kinds.delete(k);
  }
}
// Fetch the unread range of conversations we hold no events of, to count it properly.
async function probeUnread(c) {
  const n = c.last_seq - c.read_seq;
  if (c.loaded || n <= 0 || n > 200 || unread(c) !== n) return;
  try {
    const r = await S.sock.request('history', { conv: c.id, after: c.read_seq, limit: n });
    for (const m of Array.isArray(r.messages) ? r.messages : []) applyEvent(m, true);
    renderList();
  } catch { /* the protocol's count stays */ }
}
const isInt = (v) => Number.isInteger(v) && v >= 0;

function addUser(u) {
  if (!u || !isInt(u.id ?? u.user)) return;
  const id = u.id ?? u.user;
  const old = S.users.get(id) || {};
  S.users.set(id, { id, username: u.username || old.username || '',
    display_name: u.display_name || old.display_name || '' });
}
function userName(id) {
  if (id === S.me) return 'You';
  const u = S.users.get(id);
  return u ? (u.display_name || u.username) : 'User ' + id;
}
function convTitle(c) {
  if (c.kind === 'direct') {
    if (c.peer) return c.peer.display_name || c.peer.username;
    return c.title || 'Direct chat';
  }
  if (c.title) return c.title;
  if (c.members) {
    const names = [...c.members.keys()].filter((u) => u !== S.me).map(userName);
    if (names.length) return names.slice(0, 3).join(', ') + (names.length > 3 ? '…' : '');
  }
  return 'Group';
}
function peerId(c) {
  return c.kind === 'direct' && c.peer ? c.peer.id : 0;
}

// ---- small DOM helpers ------------------------------------------------------------------
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
function when(ts, short) {
  if (!ts) return '';
  const d = new Date(ts);
  if (short && new Date().toDateString() !== d.toDateString()) return dayFmt.format(d);
  return timeFmt.format(d);
}
let connNote = null;
function setConn(text, kind = '') {
  const n = $('conn');
  clearTimeout(connNote);
  n.hidden = !text;
  n.textContent = text || '';
  n.className = 'conn ' + kind;
}

// ---- session and login ------------------------------------------------------------------
function deviceId() {
  let d = localStorage.getItem('berrychat.device');
  if (!d) {
    const r = crypto.getRandomValues(new Uint8Array(6));
    d = 'web-' + [...r].map((b) => b.toString(16).padStart(2, '0')).join('');
    localStorage.setItem('berrychat.device', d);
  }
  return d;
}
function loadSession() {
  try {
    const s = JSON.parse(localStorage.getItem('berrychat.session') || 'null');
    if (s && typeof s.token === 'string' && s.user && isInt(s.user.id)) return s;
  } catch { /* fall through */ }
  return null;
}

let registering = false;
function showLogin(message = '') {
  $('app-view').hidden = true;
  $('login-view').hidden = false;
  $('login-error').textContent = message;
  setConn('');
  $('login-user').focus();
}
function setRegistering(on) {
  registering = on;
  $('register-extra').hidden = !on;
  $('login-submit').textContent = on ? 'Create account' : 'Log in';
  $('switch-text').textContent = on ? 'Have an account?' : 'New here?';
  $('login-switch').textContent = on ? 'Log in instead' : 'Create an account';
  $('login-pass').autocomplete = on ? 'new-password' : 'current-password';
  $('login-error').textContent = '';
}

async function onLogin(ev) {
  ev.preventDefault();
  const username = $('login-user').value.trim().toLowerCase();
  const password = $('login-pass').value;
  const err = $('login-error');
  if (!/^[a-z0-9_.-]{3,32}$/.test(username)) {
    err.textContent = 'User names have 3–32 characters: letters, digits, _ . -';
    return;
  }
  if (password.length < 8) {
    err.textContent = 'Passwords have at least 8 characters.';
    return;
  }
  const btn = $('login-submit');
  btn.disabled = true;
  err.textContent = registering ? 'Creating your account…' : 'Logging in…';
  try {
    if (registering) {
      const display = $('login-display').value.trim();
      await api('POST', '/register', { username, password, display_name: display || undefined });
    }
    const r = await api('POST', '/login', { username, password, device_id: deviceId() });
    if (typeof r.token !== 'string' || !r.user || !isInt(r.user.id)) {
      throw new ApiError(200, 'bad_response', 'The server sent an unexpected answer. Try again.');
    }
    S.session = { token: r.token, user: r.user, device_id: r.device_id };
    localStorage.setItem('berrychat.session', JSON.stringify(S.session));
    $('login-pass').value = '';
    err.textContent = '';
    setRegistering(false);
    startApp();
  } catch (e) {
    const msg = {
      auth_failed: 'Wrong user name or password.',
      user_exists: 'That user name is taken.',
      weak_password: 'Choose a longer password.',
      registration_closed: 'Registration is closed on this server. Ask an administrator.',
      account_disabled: 'This account is disabled.',
    }[e.code];
    err.textContent = msg || e.message || 'Something went wrong.';
  } finally {
    btn.disabled = false;
  }
}

async function logout() {
  const s = S.session;
  localStorage.removeItem('berrychat.pending.' + S.me);
  stopApp();
  localStorage.removeItem('berrychat.session');
  showLogin('You are logged out.');
  if (s) {
    try { await api('POST', '/logout', {}, s.token); } catch { /* the token dies anyway */ }
  }
}

function stopApp() {
  if (S.sock) S.sock.stop();
  S.sock = null;
  S.session = null;
  S.convs.clear();
  S.users.clear();
  S.presence.clear();
  S.typing.clear();
  S.current = 0;
  S.synced = false;
  $('conv-list').replaceChildren();
  $('messages').replaceChildren();
  if (location.hash) history.replaceState(null, '', location.pathname);
}

// ---- the connection ---------------------------------------------------------------------
function startApp() {
  S.me = S.session.user.id;
  loadPending();
  addUser(S.session.user);
  $('login-view').hidden = true;
  $('app-view').hidden = false;
  $('me-name').textContent = S.session.user.display_name || S.session.user.username;
  renderList();
  openFromHash();
  const sock = new Socket(S.session.token);
  S.sock = sock;
  sock.addEventListener('state', (e) => onState(e.detail));
  sock.addEventListener('welcome', (e) => onWelcome(e.detail));
  sock.addEventListener('push', (e) => onPush(e.detail));
  sock.addEventListener('auth', () => {
    stopApp();
    localStorage.removeItem('berrychat.session');
    showLogin('Your session ended. Please log in again.');
  });
  sock.addEventListener('terminal', (e) => {
    setConn(e.detail.message, 'bad');
    $('me-state').textContent = 'disconnected';
    const again = el('button', { type: 'button', class: 'link', text: 'Reconnect',
      onclick: () => { setConn(''); sock.start(); } });
    $('conn').append(' ', again);
  });
  sock.start();
}

function onState({ state, retryIn }) {
  document.body.dataset.conn = state;
  const me = $('me-state');
  if (state === 'online') {
    me.textContent = 'online';
    setConn('');
  } else if (state === 'connecting') {
    me.textContent = 'connecting…';
    if (S.synced) setConn('Reconnecting…', 'warn');
  } else if (state === 'waiting') {
    me.textContent = 'offline';
    const secs = Math.max(1, Math.round(retryIn));
    setConn(navigator.onLine === false ? 'You are offline. Messages will be sent when you are back.'
      : `Connection lost. Retrying in ${secs} s…`, 'warn');
  }
}

async function onWelcome(ack) {
  if (ack.limits && typeof ack.limits === 'object') Object.assign(S.limits, ack.limits);
  S.presenceOn = ack.presence !== false;
  if (ack.user) addUser(ack.user);
  try {
    await resync();
    S.synced = true;
    flushPending();
    refreshPresence();
    if (S.current) openConv(S.current, { keepFocus: true });
    else openFromHash();
    if (document.visibilityState === 'hidden') setPresence('away');
  } catch (e) {
    if (e.code !== 'disconnected') console.warn('BerryChat: resync failed', e);
  }
}

// §12: cursors -> changed conversations -> ranges by seq.
async function resync() {
  const cursors = {};
  for (const c of S.convs.values()) {
    cursors[c.id] = { seq: c.loaded ? c.high : c.last_seq, read: c.read_seq };
  }
  const r = await S.sock.request('sync', { cursors });
  const removed = Array.isArray(r.removed) ? r.removed : [];
  for (const id of removed) dropConv(id);
  const changed = (Array.isArray(r.changed) ? r.changed : []).filter((s) => s && isInt(s.conv));
  for (const s of changed) applySummary(s);
  renderList();
  const todo = changed.map((s) => S.convs.get(s.conv)).filter((c) => c.loaded);
  const workers = [];
  for (let i = 0; i < 4; i++) {
    workers.push((async () => {
      while (todo.length) await fill(todo.shift());
    })());
  }
  await Promise.all(workers);
  const probes = changed.map((s) => S.convs.get(s.conv)).filter((c) => c && !c.loaded);
  await Promise.all([0, 1, 2, 3].map(async () => {
    while (probes.length) await probeUnread(probes.shift());
  }));
  renderList();
  const unnamed = [...S.convs.values()].filter(needNames).slice(0, 50);
  await Promise.all([0, 1, 2, 3].map(async () => {
    while (unnamed.length) await loadMembers(unnamed.shift());
  }));
  for (const s of changed) {
    const c = S.convs.get(s.conv);
    if (c && c.last_seq > c.delivered_seq) receiptSoon(c, 'delivered');
  }
}

function dropConv(id) {
  S.convs.delete(id);
  if (S.current === id) closeConv();
}

function applySummary(s) {
  const c = conv(s.conv);
  if (s.kind === 'direct' || s.kind === 'group') c.kind = s.kind;
  if (typeof s.title === 'string') c.title = s.title;
  if (isInt(s.updated_at)) c.updated_at = Math.max(c.updated_at, s.updated_at);
  if (isInt(s.member_count)) c.member_count = s.member_count;
  if (typeof s.role === 'string') c.role = s.role;
  if (isInt(s.last_seq)) c.last_seq = Math.max(c.last_seq, s.last_seq);
  if (isInt(s.read_seq)) c.read_seq = Math.max(c.read_seq, s.read_seq);
  if (isInt(s.delivered_seq)) c.delivered_seq = Math.max(c.delivered_seq, s.delivered_seq);
  const lm = s.last_message;
  if (lm && isInt(lm.seq) && (!c.last_message || lm.seq >= c.last_message.seq)) {
    c.last_message = lm;
  }
  if (s.peer && isInt(s.peer.id)) {
    c.peer = s.peer;
    addUser(s.peer);
  }
}

// Pull everything after `high` until the conversation is complete (also fills holes).
async function fill(c) {
  if (c.filling || !c.loaded) return;
  if (c.last_seq - c.high > 1000) {
    // Far behind: paging forwards is pointless; show the newest page, scroll back from there.
    c.loaded = false;
    c.msgs.clear();
    if (S.current === c.id) await loadNewest(c);
    if (c.loaded && c.last_seq - c.high <= 1000) await fill(c);
    return;
  }
  c.filling = true;
  try {
    for (let round = 0; round < 20 && c.loaded && c.high < c.last_seq; round++) {
      const r = await S.sock.request('history', { conv: c.id, after: c.high, limit: FILL_PAGE });
      const msgs = Array.isArray(r.messages) ? r.messages : [];
      for (const m of msgs) applyEvent(m, true);
      if (!msgs.length) break;
      if (!r.more && c.high < c.last_seq && c.high >= msgs[msgs.length - 1].seq) break;
    }
  } catch (e) {
    if (e.code !== 'disconnected') console.warn('BerryChat: history failed', e);
  } finally {
    c.filling = false;
  }
  if (S.current === c.id) {
    renderMarks(c);
    markReadSoon(c);
  }
}

// ---- pushes -----------------------------------------------------------------------------
function onPush(f) {
  switch (f.type) {
    case 'msg': onMsgPush(f); streamDone(f); break;
    case 'msg.stream': onStreamPush(f); break;
    case 'receipt': onReceipt(f); break;
    case 'typing': onTyping(f); break;
    case 'media.played': onPlayed(f); break;
    case 'presence':
      if (isInt(f.user) && typeof f.status === 'string') {
        S.presence.set(f.user, f.status);
        renderList();
        if (S.current) renderHeader(S.convs.get(S.current));
      }
      break;
    default:
      if (typeof f.type === 'string' && f.type.startsWith('call.')) onCallPush(f);
      break; // other unknown push types are ignored (protocol.md §16)
  }
}

function onMsgPush(ev) {
  if (!isInt(ev.conv) || !isInt(ev.seq) || ev.seq < 1) return;
  const known = S.convs.has(ev.conv);
  const c = conv(ev.conv);
  applyEvent(ev, false);
  if (!known) {
    // A conversation we have not seen yet (someone started a chat with us): fetch its summary.
    S.sock.request('sync', { cursors: Object.fromEntries([...S.convs.keys()]
      .filter((id) => id !== c.id).map((id) => [id, S.convs.get(id).last_seq])) })
      .then((r) => {
        for (const s of r.changed || []) if (s && s.conv === c.id) applySummary(s);
        if (c.kind === 'group' && !c.members) loadMembers(c);
        renderList();
        refreshPresence();
      }, () => {});
  }
  if (ev.from !== S.me && ev.seq > c.delivered_seq) receiptSoon(c, 'delivered');
  if (c.loaded && c.high < c.last_seq) fill(c);
  if (S.current === c.id) markReadSoon(c);
  if (ev.kind === 'text' && isInt(ev.from)) stopTypingOf(c.id, ev.from);
  if (known && needNames(c)) loadMembers(c);
  renderList();
}

// Apply one stream event (a push, or an item of a history page in its current state).
function applyEvent(ev, fromHistory) {
  if (!ev || !isInt(ev.conv) || !isInt(ev.seq) || ev.seq < 1) return;
  const c = conv(ev.conv);
  const kind = typeof ev.kind === 'string' ? ev.kind : '?';
  if (ev.seq > c.last_seq) c.last_seq = ev.seq;
  if (isInt(ev.ts)) c.updated_at = Math.max(c.updated_at, ev.ts);
  if (ev.from === S.me && !fromHistory && ev.seq > c.read_seq) {
    // Sending advances the sender's own cursors (§4).
    c.read_seq = ev.seq;
    c.delivered_seq = Math.max(c.delivered_seq, ev.seq);
  }
  noteKind(c, ev);
  // The server advances a sender's cursors when it sends (§4): so do we, for every member.
  const sender = c.members && c.members.get(ev.from);
  if (sender && ev.seq > sender.read_seq && !fromHistory) {
    sender.read_seq = ev.seq;
    sender.delivered_seq = Math.max(sender.delivered_seq, ev.seq);
    if (S.current === c.id) renderMarks(c);
  }
  // Summary effects.
  if (TEXTLIKE.has(kind) && (!c.last_message || ev.seq >= c.last_message.seq)) c.last_message = ev;
  if (kind === 'edit' && c.last_message && c.last_message.seq === ev.target && !fromHistory) {
    c.last_message = { ...c.last_message, text: ev.text, edited_at: ev.ts };
  }
  if (kind === 'recall' && c.last_message && c.last_message.seq === ev.target) {
    c.last_message = { ...c.last_message, text: '', recalled: true };
  }
  if (kind === 'call' && (!c.last_message || ev.seq >= c.last_message.seq)) c.last_message = ev;
  if (kind === 'rename' && typeof ev.title === 'string') c.title = ev.title;
  if (kind === 'create') {
    if (ev.conv_kind === 'direct' || ev.conv_kind === 'group') c.kind = ev.conv_kind;
    if (typeof ev.title === 'string' && !c.title) c.title = ev.title;
  }
  if (['add', 'remove', 'leave', 'role'].includes(kind) && !fromHistory) {
    c.members = null;
    if (S.current === c.id) loadMembers(c);
  }
  if (kind === 'remove' && ev.user === S.me && !fromHistory) c.left = true;
  if (kind === 'leave' && ev.user === S.me && !fromHistory) c.left = true;

  if (!c.loaded) return;
  if (ev.seq < c.low && !fromHistory) return;
  const old = c.msgs.get(ev.seq);
  if (old && !fromHistory) return; // a duplicate push: already applied
  const seen = !!old || ev.seq <= c.high;
  if (TEXTLIKE.has(kind)) {
    const m = old && fromHistory ? mergeHistory(old, ev) : { ...ev, reactions: copyReactions(ev) };
    c.msgs.set(ev.seq, m);
    if (m.from === S.me && m.cid && c.pending.has(m.cid)) dropPending(c, m.cid);
  } else if (kind === 'edit' || kind === 'recall' || kind === 'react') {
    c.msgs.set(ev.seq, { seq: ev.seq, kind, hidden: true });
    if (!seen) applyToTarget(c, ev);
  } else {
    c.msgs.set(ev.seq, { ...ev, system: true });
  }
  while (c.msgs.has(c.high + 1)) c.high++;
  if (S.current === c.id) renderMsg(c, ev.seq);
}

function copyReactions(ev) {
  const out = {};
  if (ev.reactions && typeof ev.reactions === 'object') {
    for (const [e, users] of Object.entries(ev.reactions)) {
      if (Array.isArray(users)) out[e] = users.filter(isInt);
    }
  }
  return out;
}
function mergeHistory(old, ev) {
  // History items are the message in its current state; keep what is newer locally.
  const m = { ...old };
  if (ev.recalled) {
    m.recalled = true;
    m.text = '';
    delete m.attachment;
  }
  if (!m.recalled && isInt(ev.edited_at) && (!m.edited_at || ev.edited_at >= m.edited_at)) {
    m.text = ev.text;
    m.edited_at = ev.edited_at;
  }
  return m;
}
function applyToTarget(c, ev) {
  const t = c.msgs.get(ev.target);
  if (!t || !TEXTLIKE.has(t.kind)) return;
  if (ev.kind === 'edit' && typeof ev.text === 'string' && !t.recalled) {
    t.text = ev.text;
    t.edited_at = ev.ts || Date.now();
  } else if (ev.kind === 'recall') {
    t.recalled = true;
    t.text = '';
    delete t.attachment;
    t.reactions = {};
  } else if (ev.kind === 'react' && typeof ev.emoji === 'string' && isInt(ev.from)) {
    const list = (t.reactions[ev.emoji] || []).filter((u) => u !== ev.from);
    if (!ev.remove) list.push(ev.from);
    if (list.length) t.reactions[ev.emoji] = list;
    else delete t.reactions[ev.emoji];
  }
  if (S.current === c.id) {
    renderMsg(c, t.seq);
    for (const m of c.msgs.values()) if (m.reply_to === t.seq) renderMsg(c, m.seq);
  }
}

function onReceipt(f) {
  if (!isInt(f.conv) || !isInt(f.user)) return;
  const c = S.convs.get(f.conv);
  if (!c) return;
  if (f.user === S.me) {
    if (isInt(f.read_seq)) c.read_seq = Math.max(c.read_seq, f.read_seq);
    if (isInt(f.delivered_seq)) c.delivered_seq = Math.max(c.delivered_seq, f.delivered_seq);
    renderList();
  }
  const m = c.members && c.members.get(f.user);
  if (m) {
    if (isInt(f.read_seq)) m.read_seq = Math.max(m.read_seq, f.read_seq);
    if (isInt(f.delivered_seq)) m.delivered_seq = Math.max(m.delivered_seq, f.delivered_seq);
    if (S.current === c.id) renderMarks(c);
  }
}

// ---- receipts ---------------------------------------------------------------------------
function receiptSoon(c, kind) {
  const key = c.id + ':' + kind;
  if (S.receiptTimers.has(key)) return;
  S.receiptTimers.set(key, setTimeout(() => {
    S.receiptTimers.delete(key);
    const seq = kind === 'read' ? (c.loaded ? c.high : c.last_seq) : c.last_seq;
    const sent = kind === 'read' ? c.sentRead : c.sentDelivered;
    const have = kind === 'read' ? c.read_seq : c.delivered_seq;
    if (!S.sock || S.sock.state !== 'online' || seq <= Math.max(sent, have)) return;
    if (kind === 'read') c.sentRead = seq;
    else c.sentDelivered = seq;
    S.sock.request('receipt', { conv: c.id, kind, seq }).then((a) => {
      if (isInt(a.read_seq)) c.read_seq = Math.max(c.read_seq, a.read_seq);
      if (isInt(a.delivered_seq)) c.delivered_seq = Math.max(c.delivered_seq, a.delivered_seq);
      renderList();
    }, () => {
      if (kind === 'read') c.sentRead = 0;
      else c.sentDelivered = 0;
    });
  }, 250));
}
function markReadSoon(c) {
  if (document.visibilityState !== 'visible' || S.current !== c.id) return;
  if ((c.loaded ? c.high : c.last_seq) > c.read_seq) receiptSoon(c, 'read');
}

// ---- typing and presence ----------------------------------------------------------------
let typingTick = null;
function onTyping(f) {
  if (!isInt(f.conv) || !isInt(f.user) || f.user === S.me) return;
  let m = S.typing.get(f.conv);
  if (!m) S.typing.set(f.conv, (m = new Map()));
  if (f.on === false) m.delete(f.user);
  else m.set(f.user, Date.now() + 6000);
  renderTyping();
  if (!typingTick) typingTick = setInterval(expireTyping, 1000);
}
function stopTypingOf(convId, user) {
  const m = S.typing.get(convId);
  if (m && m.delete(user)) renderTyping();
}
function expireTyping() {
  const now = Date.now();
  let any = false;
  for (const m of S.typing.values()) {
    for (const [u, t] of m) if (t < now) m.delete(u);
    if (m.size) any = true;
  }
  if (!any) {
    clearInterval(typingTick);
    typingTick = null;
  }
  renderTyping();
}
function typingText(convId) {
  const m = S.typing.get(convId);
  if (!m || !m.size) return '';
  const names = [...m.keys()].map(userName);
  return names.length === 1 ? `${names[0]} is typing…` : `${names.join(', ')} are typing…`;
}
function renderTyping() {
  $('typing').textContent = S.current ? typingText(S.current) : '';
  for (const li of $('conv-list').children) {
    const t = li.querySelector('.typing-note');
    const txt = typingText(Number(li.dataset.conv));
    if (t) {
      t.textContent = txt;
      t.hidden = !txt;
    }
  }
}

let myTyping = { conv: 0, sentAt: 0, timer: null };
function typingInput() {
  const c = S.current;
  if (!c || S.editing || !S.sock || S.sock.state !== 'online') return;
  const empty = !$('input').value.trim();
  const now = Date.now();
  if (!empty && (myTyping.conv !== c || now - myTyping.sentAt > 3000)) {
    if (myTyping.conv && myTyping.conv !== c) stopTyping();
    myTyping.conv = c;
    myTyping.sentAt = now;
    S.sock.request('typing', { conv: c, on: true }).catch(() => {});
  }
  clearTimeout(myTyping.timer);
  if (empty) stopTyping();
  else myTyping.timer = setTimeout(stopTyping, 5000);
}
function stopTyping() {
  clearTimeout(myTyping.timer);
  if (myTyping.conv && S.sock && S.sock.state === 'online') {
    S.sock.request('typing', { conv: myTyping.conv, on: false }).catch(() => {});
  }
  myTyping = { conv: 0, sentAt: 0, timer: null };
}

function refreshPresence() {
  if (!S.presenceOn || !S.sock || S.sock.state !== 'online') return;
  const ids = new Set();
  for (const c of S.convs.values()) {
    if (peerId(c)) ids.add(peerId(c));
    if (c.members) for (const u of c.members.keys()) if (u !== S.me) ids.add(u);
  }
  if (!ids.size) return;
  S.sock.request('presence.get', { users: [...ids].slice(0, 1000) }).then((r) => {
    if (r.enabled === false) S.presenceOn = false;
    for (const [u, st] of Object.entries(r.users || {})) S.presence.set(Number(u), String(st));
    renderList();
    if (S.current) renderHeader(S.convs.get(S.current));
  }, () => {});
}
function setPresence(status) {
  if (S.sock && S.sock.state === 'online') {
    S.sock.request('presence', { status }).catch(() => {});
  }
}

// ---- the conversation list --------------------------------------------------------------
function lastLine(c) {
  const m = c.last_message;
  if (!m) return c.kind === 'group' ? 'Group created' : 'No messages yet';
  if (m.kind === 'call') return callText(m, S.me);
  const who = m.from === S.me ? 'You: ' : (c.kind === 'group' ? userName(m.from) + ': ' : '');
  return who + (m.recalled ? 'Message recalled' : m.text || mediaLabel(m));
}
function presenceOf(c) {
  const p = peerId(c);
  return p && S.presenceOn ? (S.presence.get(p) || 'offline') : '';
}

function renderList() {
  const ul = $('conv-list');
  if (!S.session) return;
  const convs = [...S.convs.values()].sort((a, b) => b.updated_at - a.updated_at || b.id - a.id);
  $('conv-empty').hidden = convs.length > 0;
  const focused = document.activeElement && document.activeElement.closest('#conv-list li');
  const focusConv = focused ? focused.dataset.conv : null;
  const items = convs.map((c) => {
    const n = unread(c);
    const pres = presenceOf(c);
    const title = convTitle(c);
    const typing = typingText(c.id);
    const label = [title, c.kind === 'group' ? 'group' : '', pres,
      n ? `${n} unread` : '', typing || lastLine(c)].filter(Boolean).join(', ');
    const btn = el('button', { type: 'button', class: 'conv-btn', 'aria-label': label,
      'aria-current': S.current === c.id ? 'true' : undefined,
      onclick: () => openConv(c.id) },
    el('span', { class: 'avatar', 'aria-hidden': 'true', text: (title[0] || '?').toUpperCase() },
      pres ? el('span', { class: 'dot ' + pres }) : null),
    el('span', { class: 'conv-main' },
      el('span', { class: 'conv-top' },
        el('span', { class: 'conv-title', text: title }),
        el('span', { class: 'conv-time', text: when(c.updated_at, true) })),
      el('span', { class: 'conv-bottom' },
        el('span', { class: 'conv-last', text: lastLine(c), hidden: !!typing }),
        el('span', { class: 'typing-note', text: typing, hidden: !typing }),
        n ? el('span', { class: 'badge', text: n > 99 ? '99+' : String(n) }) : null)));
    return el('li', { 'data-conv': String(c.id), class: S.current === c.id ? 'active' : '' }, btn);
  });
  ul.replaceChildren(...items);
  if (focusConv) {
    const li = ul.querySelector(`li[data-conv="${focusConv}"] button`);
    if (li) li.focus();
  }
}

// ---- the chat view ----------------------------------------------------------------------
function openFromHash() {
  const m = /^#c(\d+)$/.exec(location.hash);
  if (m && S.convs.has(Number(m[1]))) openConv(Number(m[1]));
  else if (!m && S.current) closeConv();
}

function closeConv() {
  S.current = 0;
  document.body.classList.remove('in-chat');
  $('scroller').hidden = true;
  $('composer').hidden = true;
  $('no-chat').hidden = false;
  $('chat-title').textContent = 'BerryChat';
  $('chat-sub').textContent = '';
  $('typing').textContent = '';
  updateCallButtons(null);
  cancelReply();
  renderList();
}

async function openConv(id, { keepFocus = false } = {}) {
  const c = S.convs.get(id);
  if (!c) return;
  const switching = S.current !== id;
  if (switching) {
    if (myTyping.conv) stopTyping();
    cancelReply();
    cancelEdit();
    $('messages').replaceChildren();
  }
  S.current = id;
  if (location.hash !== '#c' + id) history.pushState(null, '', '#c' + id);
  document.body.classList.add('in-chat');
  $('no-chat').hidden = true;
  $('scroller').hidden = false;
  $('composer').hidden = false;
  renderHeader(c);
  renderList();
  renderTyping();
  if (!keepFocus) $('input').focus();
  if (!c.members) loadMembers(c);
  if (!c.loaded) await loadNewest(c);
  else if (switching) renderAll(c);
  if (S.current !== id) return;
  fill(c);
  markReadSoon(c);
}

async function loadMembers(c) {
  if (!S.sock || S.sock.state !== 'online' || c.membersLoading) return;
  c.membersLoading = true;
  try {
    const r = await S.sock.request('conv.get', { conv: c.id });
    const d = r.conversation;
    if (!d || !Array.isArray(d.members)) return;
    c.members = new Map();
    for (const m of d.members) {
      if (!m || !isInt(m.user)) continue;
      addUser(m);
      c.members.set(m.user, { role: String(m.role || 'member'), read_seq: m.read_seq | 0,
        delivered_seq: m.delivered_seq | 0 });
    }
    if (typeof d.title === 'string') c.title = d.title;
    if (S.current === c.id) {
      renderHeader(c);
      renderMarks(c);
      refreshPresence();
    }
    renderList();
  } catch (e) {
    if (e.code !== 'disconnected') console.warn('BerryChat: conv.get failed', e);
  } finally {
    c.membersLoading = false;
  }
}
// Names for the list: a group whose last sender we cannot name yet gets its member list.
function needNames(c) {
  return c.kind === 'group' && !c.members && c.last_message && !S.users.has(c.last_message.from);
}

async function loadNewest(c) {
  if (c.loading) return c.loading;
  if (!S.sock || S.sock.state !== 'online') return;
  c.loading = (async () => {
    try {
      const r = await S.sock.request('history', { conv: c.id, limit: PAGE });
      const msgs = (Array.isArray(r.messages) ? r.messages : []).filter((m) => m && isInt(m.seq));
      c.msgs.clear();
      c.loaded = true;
      c.low = msgs.length ? msgs[0].seq : c.last_seq + 1;
      c.high = c.low - 1;
      c.moreBefore = !!r.more;
      for (const m of msgs) applyEvent(m, true);
      if (S.current === c.id) renderAll(c, true);
    } catch (e) {
      if (e.code !== 'disconnected') console.warn('BerryChat: history failed', e);
    } finally {
      c.loading = null;
    }
  })();
  return c.loading;
}

let loadingOlder = false;
async function loadOlder() {
  const c = S.convs.get(S.current);
  if (!c || !c.loaded || !c.moreBefore || loadingOlder || !S.sock || S.sock.state !== 'online') {
    return;
  }
  loadingOlder = true;
  const sc = $('scroller');
  const before = sc.scrollHeight - sc.scrollTop;
  try {
    const r = await S.sock.request('history', { conv: c.id, before: c.low, limit: PAGE });
    const msgs = (Array.isArray(r.messages) ? r.messages : []).filter((m) => m && isInt(m.seq));
    if (S.current !== c.id) return;
    c.moreBefore = !!r.more && msgs.length > 0;
    const oldLow = c.low;
    if (msgs.length) c.low = Math.min(c.low, msgs[0].seq);
    for (const m of msgs) applyEvent(m, true);
    if (msgs.length) renderMsg(c, oldLow); // its predecessor is known now
    sc.scrollTop = sc.scrollHeight - before;
    $('load-older').hidden = !c.moreBefore;
  } catch (e) {
    if (e.code !== 'disconnected') console.warn('BerryChat: history failed', e);
  } finally {
    loadingOlder = false;
  }
}

function renderHeader(c) {
  if (!c) return;
  $('chat-title').textContent = convTitle(c);
  let sub = '';
  if (c.kind === 'direct') {
    const p = presenceOf(c);
    sub = p ? (p === 'online' ? 'online' : p === 'away' ? 'away' : 'offline') : '';
  } else {
    sub = `${c.members ? c.members.size : c.member_count} members`;
  }
  if (c.left) sub = 'You are no longer a member';
  if (c.kind === 'direct' && c.peer && c.peer.bot) sub = 'bot';
  $('chat-sub').textContent = sub;
  updateCallButtons(c);
}

function renderAll(c, toBottom = true) {
  const ol = $('messages');
  ol.replaceChildren();
  const seqs = [...c.msgs.keys()].sort((a, b) => a - b);
  const frag = document.createDocumentFragment();
  for (const s of seqs) {
    const e = msgEl(c, c.msgs.get(s));
    if (e) frag.append(e);
  }
  for (const p of c.pending.values()) frag.append(msgEl(c, p));
  ol.append(frag);
  $('load-older').hidden = !c.moreBefore;
  if (toBottom) scrollToBottom(true);
  roving();
}

// One message action button is in the Tab order; the arrow keys move between messages.
// While the focus is elsewhere, the Tab stop is the newest message.
function roving() {
  const ol = $('messages');
  if (ol.contains(document.activeElement) && ol.querySelector('.more[tabindex="0"]')) return;
  const all = ol.querySelectorAll('.more');
  for (const b of all) b.tabIndex = -1;
  if (all.length) all[all.length - 1].tabIndex = 0;
}
function messageKeys(ev) {
  const b = ev.target.closest('.more');
  if (!b) return;
  const all = [...$('messages').querySelectorAll('.more')];
  const i = all.indexOf(b);
  const to = { ArrowUp: i - 1, ArrowDown: i + 1, Home: 0, End: all.length - 1 }[ev.key];
  if (to === undefined || !all[to]) return;
  ev.preventDefault();
  b.tabIndex = -1;
  all[to].tabIndex = 0;
  all[to].focus();
  if (to === 0) loadOlder();
}

function nearBottom() {
  const sc = $('scroller');
  return sc.scrollHeight - sc.scrollTop - sc.clientHeight < 120;
}
function scrollToBottom(force) {
  const sc = $('scroller');
  if (force || nearBottom()) sc.scrollTop = sc.scrollHeight;
}

// Insert or replace the element of one seq, in seq order.
function renderMsg(c, seq) {
  const m = c.msgs.get(seq);
  const ol = $('messages');
  const old = ol.querySelector(`li[data-seq="${seq}"]`);
  const fresh = m ? msgEl(c, m) : null;
  if (old) {
    const wasFocused = old.contains(document.activeElement);
    const b = old.querySelector('.more[tabindex="0"]');
    const nb = fresh && fresh.querySelector('.more');
    if (b && nb) nb.tabIndex = 0;
    if (fresh) old.replaceWith(fresh);
    else old.remove();
    if (wasFocused && nb) nb.focus();
    roving();
    return;
  }
  if (!fresh) return;
  const stick = nearBottom();
  let after = null;
  for (const li of ol.children) {
    const s = Number(li.dataset.seq);
    if (li.dataset.seq === '' || s > seq) {
      after = li;
      break;
    }
  }
  ol.insertBefore(fresh, after);
  roving();
  if (stick) scrollToBottom(true);
}

function markFor(c, m) {
  if (m.from !== S.me) return null;
  if (!m.seq) {
    return m.failed ? { sym: '!', label: 'Not sent', cls: 'failed' } : { sym: '🕓', label: 'Sending', cls: 'sending' };
  }
  if (!c.members) return { sym: '✓', label: 'Sent', cls: 'sent' };
  const others = [...c.members.entries()].filter(([u]) => u !== S.me).map(([, v]) => v);
  if (!others.length) return { sym: '✓', label: 'Sent', cls: 'sent' };
  const read = others.filter((o) => o.read_seq >= m.seq).length;
  const delivered = others.filter((o) => o.delivered_seq >= m.seq).length;
  if (read === others.length) return { sym: '✓✓', label: 'Read', cls: 'read' };
  if (delivered === others.length) {
    return { sym: '✓✓', label: read ? `Delivered, read by ${read}` : 'Delivered', cls: 'delivered' };
  }
  return { sym: '✓', label: 'Sent', cls: 'sent' };
}

function renderMarks(c) {
  if (S.current !== c.id) return;
  for (const span of $('messages').querySelectorAll('li.mine .mark')) {
    const li = span.closest('li');
    const m = c.msgs.get(Number(li.dataset.seq));
    if (!m) continue;
    const k = markFor(c, m);
    if (!k) continue;
    span.textContent = k.sym;
    span.className = 'mark ' + k.cls;
    span.setAttribute('aria-label', k.label);
    span.title = k.label;
  }
}

const SYSTEM_TEXT = {
  create: (e) => e.conv_kind === 'group'
    ? `${userName(e.from)} created the group${e.title ? ' “' + e.title + '”' : ''}`
    : `${userName(e.from)} started the chat`,
  rename: (e) => `${userName(e.from)} renamed the group to “${e.title}”`,
  add: (e) => `${userName(e.from)} added ${(e.users || []).map(userName).join(', ')}`,
  remove: (e) => `${userName(e.from)} removed ${userName(e.user)}`,
  leave: (e) => `${userName(e.user)} left`,
  role: (e) => `${userName(e.user)} is now ${e.role}`,
  call: (e) => callText(e, S.me),
};

// A message that follows one by the same sender within 5 minutes shows no name again.
function continues(c, m) {
  for (let s = m.seq - 1; s >= c.low && s > m.seq - 20; s--) {
    const p = c.msgs.get(s);
    if (!p) return false;
    if (p.hidden) continue;
    return TEXTLIKE.has(p.kind) && p.from === m.from && (m.ts || 0) - (p.ts || 0) < 300000;
  }
  return false;
}

function msgEl(c, m) {
  if (m.hidden) return null;
  if (m.system) {
    const f = SYSTEM_TEXT[m.kind];
    return el('li', { class: 'sys', 'data-seq': String(m.seq) },
      f ? f(m) : 'Unsupported message');
  }
  const mine = m.from === S.me;
  const cont = m.seq && continues(c, m);
  const li = el('li', { class: 'msg' + (mine ? ' mine' : '') + (m.recalled ? ' recalled' : '') +
    (cont ? ' cont' : ''),
    'data-seq': m.seq ? String(m.seq) : '', 'data-cid': m.cid || '' });
  const bubble = el('div', { class: 'bubble' });
  if (!mine && c.kind === 'group') {
    bubble.append(el('div', { class: cont ? 'sr' : 'who', text: userName(m.from) }));
  }
  if (m.bot && !mine) bubble.append(botBadge(m));
  if (m.reply_to) {
    const t = c.msgs.get(m.reply_to);
    const q = t && TEXTLIKE.has(t.kind)
      ? `${userName(t.from)}: ${t.recalled ? 'Message recalled' : t.text || mediaLabel(t)}`
      : 'an earlier message';
    bubble.append(el('blockquote', { class: 'quote', text: q, 'aria-label': 'In reply to ' + q }));
  }
  const att = !m.recalled && attachmentEl(c, m);
  if (att) bubble.append(att);
  if (m.recalled || m.text || !att) {
    bubble.append(el('div', { class: 'text', text: m.recalled ? 'Message recalled' : m.text }));
  }
  const meta = el('div', { class: 'meta' });
  if (m.edited_at && !m.recalled) meta.append(el('span', { class: 'edited', text: 'edited' }));
  meta.append(el('time', { text: when(m.ts), datetime: m.ts ? new Date(m.ts).toISOString() : undefined }));
  const k = markFor(c, m);
  if (k) meta.append(el('span', { class: 'mark ' + k.cls, text: k.sym, 'aria-label': k.label, title: k.label }));
  bubble.append(meta);
  const rx = Object.entries(m.reactions || {}).filter(([, u]) => u.length);
  if (rx.length) {
    const row = el('div', { class: 'reactions' });
    for (const [emoji, users] of rx) {
      const mineR = users.includes(S.me);
      row.append(el('button', { type: 'button', class: 'chip', text: `${emoji} ${users.length}`,
        'aria-pressed': mineR ? 'true' : 'false',
        'aria-label': `${emoji} by ${users.map(userName).join(', ')}${mineR ? ', remove yours' : ''}`,
        onclick: () => react(c, m.seq, emoji, mineR) }));
    }
    bubble.append(row);
  }
  li.append(bubble);
  if (m.failed) {
    li.append(el('button', { type: 'button', class: 'link retry', text: 'Retry',
      onclick: () => { m.failed = false; flushPending(); renderPending(c, m); } }));
  }
  if (m.seq && !m.recalled) {
    li.append(el('button', { type: 'button', class: 'icon more', text: '⋯', tabindex: '-1',
      'aria-label': 'Actions for message: ' + (m.text || mediaLabel(m)).slice(0, 40),
      'aria-haspopup': 'menu',
      onclick: (e) => openMenu(c, m, e.currentTarget) }));
  }
  return li;
}

// ---- sending ----------------------------------------------------------------------------
function newCid() {
  S.cidN++;
  return `${S.session.device_id || 'web'}-${Date.now().toString(36)}-${S.cidN}`;
}

function renderPending(c, p) {
  if (S.current !== c.id) return;
  const ol = $('messages');
  const old = ol.querySelector(`li[data-cid="${CSS.escape(p.cid)}"]`);
  const fresh = msgEl(c, p);
  if (old) old.replaceWith(fresh);
  else ol.append(fresh);
  scrollToBottom(true);
}
// Unsent messages survive a reload (same cid: the server stores each once).
function savePending() {
  if (!S.session) return;
  const all = [];
  for (const c of S.convs.values()) {
    for (const p of c.pending.values()) {
      all.push({ conv: c.id, cid: p.cid, text: p.text, reply_to: p.reply_to || 0, ts: p.ts,
        attachment: p.attachment });
    }
  }
  const key = 'berrychat.pending.' + S.me;
  if (all.length) localStorage.setItem(key, JSON.stringify(all));
  else localStorage.removeItem(key);
}
function loadPending() {
  let all = [];
  try {
    all = JSON.parse(localStorage.getItem('berrychat.pending.' + S.me) || '[]');
  } catch { /* ignore */ }
  for (const p of Array.isArray(all) ? all : []) {
    if (!p || !isInt(p.conv) || typeof p.cid !== 'string' || typeof p.text !== 'string') continue;
    const a = p.attachment && typeof p.attachment.id === 'string' ? p.attachment : undefined;
    conv(p.conv).pending.set(p.cid, { conv: p.conv, seq: 0, from: S.me, kind: a ? a.kind : 'text',
      cid: p.cid, text: p.text, ts: p.ts || Date.now(), reply_to: p.reply_to || 0, reactions: {},
      attachment: a });
  }
}
function dropPending(c, cid) {
  if (c.pending.delete(cid)) savePending();
  if (S.current === c.id) {
    const li = $('messages').querySelector(`li[data-seq=""][data-cid="${CSS.escape(cid)}"]`);
    if (li) li.remove();
  }
}

// Send (or resend with the same cid) every pending message, oldest first, per conversation.
const sendingNow = new Set();
async function flushPending() {
  if (!S.sock || S.sock.state !== 'online') return;
  for (const c of S.convs.values()) {
    for (const p of [...c.pending.values()]) {
      if (p.failed || sendingNow.has(p.cid)) continue;
      sendingNow.add(p.cid);
      try {
        const fields = { conv: c.id, cid: p.cid };
        if (p.text) fields.text = p.text;
        if (p.attachment) fields.attachment = p.attachment.id;
        if (p.reply_to) fields.reply_to = p.reply_to;
        const a = await S.sock.request('msg.send', fields);
        if (isInt(a.seq) && !c.msgs.has(a.seq)) {
          const m = { conv: c.id, seq: a.seq, ts: a.ts, from: S.me, kind: p.kind, cid: p.cid,
            text: p.text, reply_to: p.reply_to || undefined, reactions: {},
            attachment: p.attachment };
          dropPending(c, p.cid);
          applyEvent(m, false);
        } else {
          dropPending(c, p.cid);
        }
        renderList();
      } catch (e) {
        if (e.code === 'disconnected' || e.retryable) return; // resent after reconnecting
        p.failed = true;
        p.error = e.message;
        renderPending(c, p);
        setConn('Not sent: ' + e.message, 'bad');
      } finally {
        sendingNow.delete(p.cid);
      }
    }
  }
}

function sendText() {
  const c = S.convs.get(S.current);
  const input = $('input');
  const text = input.value;
  if (!c || !text.trim()) return;
  if ([...text].length > S.limits.max_text_chars) {
    setConn(`Messages can have at most ${S.limits.max_text_chars} characters.`, 'bad');
    return;
  }
  if (S.editing) {
    const seq = S.editing;
    cancelEdit();
    stopTyping();
    S.sock.request('msg.edit', { conv: c.id, cid: newCid(), seq, text })
      .catch((e) => setConn('Not edited: ' + e.message, 'bad'));
    input.value = '';
    autosize();
    return;
  }
  const p = { conv: c.id, seq: 0, from: S.me, kind: 'text', cid: newCid(), text, ts: Date.now(),
    reply_to: S.replyTo || 0, reactions: {} };
  c.pending.set(p.cid, p);
  savePending();
  input.value = '';
  autosize();
  cancelReply();
  stopTyping();
  renderPending(c, p);
  if (S.sock && S.sock.state === 'online') flushPending();
}

// An uploaded attachment becomes a pending message like a text (same cid on every resend).
function sendAttachment(c, attachment) {
  const p = { conv: c.id, seq: 0, from: S.me, kind: attachment.kind, cid: newCid(), text: '',
    ts: Date.now(), reply_to: S.replyTo || 0, reactions: {}, attachment };
  c.pending.set(p.cid, p);
  savePending();
  cancelReply();
  renderPending(c, p);
  if (S.sock && S.sock.state === 'online') flushPending();
}

// media.played (§17): the sender's devices mark the message played.
function onPlayed(f) {
  if (!isInt(f.conv) || !isInt(f.seq) || !isInt(f.user) || f.user === S.me) return;
  const c = S.convs.get(f.conv);
  const m = c && c.msgs.get(f.seq);
  if (!m || m.from !== S.me) return;
  m.played = true;
  if (S.current === c.id) renderMsg(c, m.seq);
}

function react(c, seq, emoji, remove) {
  const f = { conv: c.id, cid: newCid(), seq, emoji };
  if (remove) f.remove = true;
  S.sock.request('msg.react', f).catch((e) => setConn('Reaction failed: ' + e.message, 'bad'));
}

// ---- reply, edit, recall, the action menu -----------------------------------------------
function startReply(c, m) {
  cancelEdit();
  S.replyTo = m.seq;
  $('reply-text').textContent = `Replying to ${userName(m.from)}: ${m.text.slice(0, 80)}`;
  $('reply-bar').hidden = false;
  $('input').focus();
}
function cancelReply() {
  S.replyTo = 0;
  $('reply-bar').hidden = true;
}
function startEdit(c, m) {
  cancelReply();
  S.editing = m.seq;
  $('reply-text').textContent = 'Editing your message (Esc to cancel)';
  $('reply-bar').hidden = false;
  $('input').value = m.text;
  autosize();
  $('input').focus();
}
function cancelEdit() {
  if (!S.editing) return;
  S.editing = 0;
  $('reply-bar').hidden = true;
  $('input').value = '';
  autosize();
}

let menuFor = null;
function openMenu(c, m, anchor) {
  const menu = $('msg-menu');
  menuFor = { c, m, anchor };
  const mine = m.from === S.me;
  const age = (Date.now() - (m.ts || 0)) / 1000;
  const mod = c.kind === 'group' && (c.role === 'owner' || c.role === 'admin');
  menu.querySelector('[data-act=edit]').hidden = !mine || age > S.limits.edit_window_seconds;
  menu.querySelector('[data-act=recall]').hidden =
    !((mine && age <= S.limits.recall_window_seconds) || mod);
  menu.hidden = false;
  const r = anchor.getBoundingClientRect();
  const mw = menu.offsetWidth;
  const mh = menu.offsetHeight;
  menu.style.left = Math.max(8, Math.min(innerWidth - mw - 8, r.right - mw)) + 'px';
  menu.style.top = (r.bottom + mh + 8 > innerHeight ? r.top - mh - 4 : r.bottom + 4) + 'px';
  anchor.setAttribute('aria-expanded', 'true');
  menu.querySelector('button').focus();
}
function closeMenu(restore = true) {
  const menu = $('msg-menu');
  if (menu.hidden) return;
  menu.hidden = true;
  if (menuFor) {
    menuFor.anchor.setAttribute('aria-expanded', 'false');
    if (restore && menuFor.anchor.isConnected) menuFor.anchor.focus();
  }
  menuFor = null;
}
function onMenu(ev) {
  const b = ev.target.closest('button');
  if (!b || !menuFor) return;
  const { c, m } = menuFor;
  const act = b.dataset.act;
  const emoji = b.dataset.emoji;
  closeMenu(act !== 'reply' && act !== 'edit');
  if (emoji) {
    react(c, m.seq, emoji, (m.reactions[emoji] || []).includes(S.me));
  } else if (act === 'reply') startReply(c, m);
  else if (act === 'edit') startEdit(c, m);
  else if (act === 'recall') {
    S.sock.request('msg.recall', { conv: c.id, cid: newCid(), seq: m.seq })
      .catch((e) => setConn('Not recalled: ' + e.message, 'bad'));
  } else if (act === 'copy') navigator.clipboard?.writeText(m.text).catch(() => {});
}
function menuKeys(ev) {
  const items = [...$('msg-menu').querySelectorAll('button:not([hidden])')];
  const i = items.indexOf(document.activeElement);
  if (ev.key === 'Escape') {
    ev.preventDefault();
    closeMenu();
  } else if (ev.key === 'ArrowDown' || ev.key === 'ArrowRight') {
    ev.preventDefault();
    items[(i + 1) % items.length].focus();
  } else if (ev.key === 'ArrowUp' || ev.key === 'ArrowLeft') {
    ev.preventDefault();
    items[(i - 1 + items.length) % items.length].focus();
  } else if (ev.key === 'Tab') {
    closeMenu();
  }
}

// ---- emoji picker -----------------------------------------------------------------------
function toggleEmoji(show) {
  const p = $('emoji-picker');
  const open = show ?? p.hidden;
  p.hidden = !open;
  $('emoji-btn').setAttribute('aria-expanded', String(open));
  if (open) p.querySelector('button').focus();
}
function insertEmoji(e) {
  const input = $('input');
  const a = input.selectionStart ?? input.value.length;
  const b = input.selectionEnd ?? a;
  input.value = input.value.slice(0, a) + e + input.value.slice(b);
  input.selectionStart = input.selectionEnd = a + e.length;
  toggleEmoji(false);
  input.focus();
  typingInput();
}
function emojiKeys(ev) {
  const items = [...$('emoji-picker').querySelectorAll('button')];
  const i = items.indexOf(document.activeElement);
  const cols = 8;
  const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols };
  if (ev.key === 'Escape') {
    ev.preventDefault();
    toggleEmoji(false);
    $('emoji-btn').focus();
  } else if (ev.key in moves && i >= 0) {
    ev.preventDefault();
    items[Math.min(items.length - 1, Math.max(0, i + moves[ev.key]))].focus();
  }
}

// ---- new chat dialog --------------------------------------------------------------------
function openNewChat() {
  const d = $('new-chat-dialog');
  $('nc-error').textContent = '';
  $('new-chat-form').reset();
  ncKind();
  d.showModal();
  $('nc-members').focus();
}
function ncKind() {
  const group = $('new-chat-form').kind.value === 'group';
  $('nc-title-row').hidden = !group;
  $('nc-members-label').textContent = group ? 'Members' : 'Their user name';
  $('nc-hint').hidden = !group;
}
async function startChat(ev) {
  ev.preventDefault();
  const form = $('new-chat-form');
  const kind = form.kind.value;
  const names = $('nc-members').value.split(/[\s,]+/).map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  const err = $('nc-error');
  if (!names.length) {
    err.textContent = 'Name at least one user.';
    return;
  }
  if (kind === 'direct' && names.length !== 1) {
    err.textContent = 'A one-to-one chat has exactly one other person.';
    return;
  }
  if (!S.sock || S.sock.state !== 'online') {
    err.textContent = 'Not connected. Try again in a moment.';
    return;
  }
  const fields = { kind, members: names };
  const title = $('nc-group-title').value.trim();
  if (kind === 'group' && title) fields.title = title;
  $('nc-start').disabled = true;
  try {
    const a = await S.sock.request('conv.create', fields);
    if (!isInt(a.conv)) throw new Error('unexpected answer');
    const r = await S.sock.request('sync', { cursors: Object.fromEntries([...S.convs.keys()]
      .filter((id) => id !== a.conv).map((id) => [id, S.convs.get(id).last_seq])) });
    for (const s of r.changed || []) if (s && s.conv === a.conv) applySummary(s);
    conv(a.conv);
    $('new-chat-dialog').close();
    renderList();
    refreshPresence();
    openConv(a.conv);
  } catch (e) {
    err.textContent = e.code === 'not_found' ? 'No such user.' : (e.message || 'Failed.');
  } finally {
    $('nc-start').disabled = false;
  }
}

// ---- wiring -----------------------------------------------------------------------------
function autosize() {
  const t = $('input');
  t.style.height = 'auto';
  t.style.height = Math.min(160, t.scrollHeight) + 'px';
}

function myLastMessage(c) {
  const seqs = [...c.msgs.keys()].sort((a, b) => b - a);
  for (const s of seqs) {
    const m = c.msgs.get(s);
    if (m.kind === 'text' && m.from === S.me && !m.recalled) return m;
  }
  return null;
}

function init() {
  $('login-form').addEventListener('submit', onLogin);
  $('login-switch').addEventListener('click', () => setRegistering(!registering));
  $('logout').addEventListener('click', logout);
  $('new-chat').addEventListener('click', openNewChat);
  $('new-chat-form').addEventListener('submit', startChat);
  $('new-chat-form').addEventListener('change', ncKind);
  $('nc-cancel').addEventListener('click', () => $('new-chat-dialog').close());
  $('back').addEventListener('click', () => {
    closeConv();
    history.pushState(null, '', location.pathname);
    const li = $('conv-list').querySelector('button');
    if (li) li.focus();
  });
  addEventListener('popstate', openFromHash);
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    sendText();
  });
  const input = $('input');
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendText();
    } else if (e.key === 'Escape') {
      if (S.editing) cancelEdit();
      else cancelReply();
    } else if (e.key === 'ArrowUp' && !input.value) {
      const c = S.convs.get(S.current);
      const m = c && myLastMessage(c);
      if (m) {
        e.preventDefault();
        startEdit(c, m);
      }
    }
  });
  input.addEventListener('input', () => {
    autosize();
    typingInput();
  });
  $('reply-cancel').addEventListener('click', () => {
    if (S.editing) cancelEdit();
    else cancelReply();
    $('input').focus();
  });
  $('load-older').addEventListener('click', loadOlder);
  $('messages').addEventListener('keydown', messageKeys);
  $('scroller').addEventListener('scroll', () => {
    if ($('scroller').scrollTop < 80) loadOlder();
  }, { passive: true });
  const picker = $('emoji-picker');
  for (const e of EMOJI) {
    picker.append(el('button', { type: 'button', class: 'emoji', text: e, 'aria-label': e,
      onclick: () => insertEmoji(e) }));
  }
  picker.addEventListener('keydown', emojiKeys);
  $('emoji-btn').addEventListener('click', () => toggleEmoji());
  const quick = $('msg-menu').querySelector('.quick');
  for (const e of QUICK) {
    quick.append(el('button', { type: 'button', role: 'menuitem', class: 'emoji', text: e,
      'data-emoji': e, 'aria-label': 'React with ' + e }));
  }
  $('msg-menu').addEventListener('click', onMenu);
  $('msg-menu').addEventListener('keydown', menuKeys);
  document.addEventListener('pointerdown', (e) => {
    if (!e.target.closest('#msg-menu, .more')) closeMenu(false);
    if (!e.target.closest('#emoji-picker, #emoji-btn')) toggleEmoji(false);
  });
  document.addEventListener('visibilitychange', () => {
    const vis = document.visibilityState === 'visible';
    setPresence(vis ? 'online' : 'away');
    if (vis && S.current) markReadSoon(S.convs.get(S.current));
  });
  setupMedia({
    conv: () => S.convs.get(S.current) || null,
    token: () => (S.session ? S.session.token : ''),
    me: () => S.me,
    send: sendAttachment,
    played: (c, m) => {
      if (S.sock) S.sock.request('media.played', { conv: c.id, seq: m.seq }).catch(() => {});
    },
  });
  setupCalls({
    conv: () => S.convs.get(S.current) || null,
    sock: () => S.sock,
    userName,
  });
  setupAssistant({
    conv: () => S.convs.get(S.current) || null,
    userName,
    scrollToBottom: () => scrollToBottom(false),
  });
  S.session = loadSession();
  if (S.session) startApp();
  else showLogin();
}

init();
