// BerryChat web client: 1:1 voice and video calls (docs/protocol.md §18) with WebRTC.
// The server relays the signalling (call.* frames); media flows between the two browsers,
// through the STUN/TURN servers the server hands out (ice_servers). app.js owns the state and
// the socket; this module gets what it needs through `ctx` and draws the call panel.

import { el } from './dom.js';

let ctx = null;
let call = null; // the call on this device: see newCall()
let note = null; // a timer that clears the "call ended" notice

const $ = (id) => document.getElementById(id);

const REASON = {
  busy: 'Busy: they are in another call',
  rejected: 'Call declined',
  cancelled: 'Call cancelled',
  timeout: 'No answer',
  answered_elsewhere: 'Answered on another device',
  hangup: 'Call ended',
  disconnected: 'Call ended: connection lost',
  server_shutdown: 'Call ended: the server restarted',
  server_lost: 'Call ended: its server stopped answering',
  failed: 'Call failed: no media connection',
  media: 'Call failed: no camera or microphone',
};

function duration(s) {
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, '0')}`;
}

// The line a call record (a `call` stream event) shows in the history and the list.
export function callText(m, me) {
  const c = (m && m.call) || {};
  const icon = c.media === 'video' ? '📹' : '📞';
  const kind = c.media === 'video' ? 'video call' : 'voice call';
  const outgoing = m.from === me;
  switch (c.outcome) {
    case 'missed': return `${icon} ${outgoing ? 'Unanswered' : 'Missed'} ${kind}`;
    case 'rejected': return `${icon} ${outgoing ? 'Declined' : 'You declined a'} ${kind}`;
    case 'busy': return `${icon} ${kind[0].toUpperCase() + kind.slice(1)}: busy`;
    case 'ended': {
      const d = Number.isInteger(c.duration) ? ` · ${duration(c.duration)}` : '';
      return `${icon} ${outgoing ? 'Outgoing' : 'Incoming'} ${kind}${d}`;
    }
    default: return `${icon} Call`;
  }
}

// ---- the panel --------------------------------------------------------------------------
function panel() {
  let p = $('call-panel');
  if (p) return p;
  p = el('section', { id: 'call-panel', class: 'call-panel', role: 'dialog',
    'aria-label': 'Call', 'aria-live': 'polite', hidden: true },
  el('p', { id: 'call-peer', class: 'call-peer' }),
  el('p', { id: 'call-status', class: 'call-status', role: 'status' }),
  el('div', { class: 'call-videos' },
    el('video', { id: 'call-remote', class: 'call-remote', autoplay: true, playsInline: true }),
    el('video', { id: 'call-local', class: 'call-local', autoplay: true, playsInline: true,
      muted: true })),
  el('div', { class: 'call-buttons' },
    el('button', { id: 'call-accept', type: 'button', class: 'primary', text: 'Accept',
      onclick: () => accept() }),
    el('button', { id: 'call-reject', type: 'button', class: 'danger', text: 'Decline',
      onclick: () => reject() }),
    el('button', { id: 'call-hangup', type: 'button', class: 'danger', text: 'Hang up',
      onclick: () => hangup() }),
    el('button', { id: 'call-close', type: 'button', class: 'link', text: 'Close',
      onclick: () => { p.hidden = true; } })));
  document.body.append(p);
  return p;
}

function show(status, buttons) {
  const p = panel();
  p.hidden = false;
  if (note) clearTimeout(note);
  note = null;
  $('call-status').textContent = status;
  p.dataset.state = call ? call.state : 'idle';
  for (const b of ['accept', 'reject', 'hangup', 'close']) {
    $('call-' + b).hidden = !buttons.includes(b);
  }
  if (call) {
    $('call-peer').textContent = (call.media === 'video' ? '📹 ' : '📞 ') + ctx.userName(call.peer);
  }
  const first = buttons.map((b) => $('call-' + b)).find((b) => b && !b.hidden);
  if (first && !p.contains(document.activeElement)) first.focus();
}

function ended(reason) {
  const text = REASON[reason] || 'Call ended';
  cleanup();
  const p = panel();
  p.dataset.state = 'ended';
  p.dataset.reason = reason;
  show(text, ['close']);
  p.dataset.state = 'ended';
  note = setTimeout(() => { p.hidden = true; }, 4000);
}

// ---- call buttons in the chat header ----------------------------------------------------
export function updateCallButtons(c) {
  const ok = !!(c && c.kind === 'direct' && c.peer && !c.peer.bot && !c.left);
  for (const id of ['call-audio', 'call-video']) {
    const b = $(id);
    if (b) {
      b.hidden = !ok;
      b.disabled = !!call;
    }
  }
}

// ---- signalling -------------------------------------------------------------------------
function newCall(id, conv, peer, media, role, iceServers) {
  const c = { id, conv, peer, media, role, iceServers: iceServers || [], state: 'ringing',
    pc: null, local: null, pendingIce: [], started: 0, timer: null, sock: ctx.sock(),
    onWelcome: null };
  // The server ends a call when this device's connection drops (protocol.md §18): a
  // reconnect during the call means it is over, even if media still flows.
  c.onWelcome = () => { if (call === c) ended('disconnected'); };
  if (c.sock) c.sock.addEventListener('welcome', c.onWelcome);
  return c;
}

async function startCall(media) {
  const c = ctx.conv();
  if (!c || call || !ctx.sock()) return;
  const peer = c.peer ? c.peer.id : 0;
  call = newCall('', c.id, peer, media, 'caller', []);
  call.state = 'calling';
  show('Calling…', ['hangup']);
  updateCallButtons(c);
  let r;
  try {
    r = await ctx.sock().request('call.invite', { conv: c.id, media });
  } catch (e) {
    ended('failed');
    $('call-status').textContent = e && e.code === 'busy'
      ? 'You are already in a call' : 'The call could not be started';
    return;
  }
  if (r.state === 'ended') {
    ended(r.reason || 'failed');
    return;
  }
  if (!call) { // hung up while the invite was on its way
    ctx.sock().request('call.hangup', { call: r.call }).catch(() => {});
    return;
  }
  call.id = r.call;
  call.iceServers = r.ice_servers || [];
  call.state = 'calling';
  show('Calling…', ['hangup']);
  getMedia().catch(() => {}); // ask for the camera/microphone while it rings
}

async function getMedia() {
  if (call.local) return call.local;
  const video = call.media === 'video';
  call.local = await navigator.mediaDevices.getUserMedia({ audio: true, video });
  if (!call) return null;
  if (video) $('call-local').srcObject = call.local;
  return call.local;
}

function peerConnection() {
  const pc = new RTCPeerConnection({ iceServers: call.iceServers });
  call.pc = pc;
  const id = call.id;
  pc.onicecandidate = (e) => {
    if (!call || call.id !== id) return;
    const cand = e.candidate;
    const f = { call: id, candidate: cand ? cand.candidate : '' };
    if (cand && cand.sdpMid !== null && cand.sdpMid !== undefined) f.sdp_mid = cand.sdpMid;
    if (cand && Number.isInteger(cand.sdpMLineIndex)) f.sdp_mline_index = cand.sdpMLineIndex;
    ctx.sock().request('call.ice', f).catch(() => {});
  };
  pc.ontrack = (e) => {
    const v = $('call-remote');
    if (v.srcObject !== e.streams[0]) v.srcObject = e.streams[0];
  };
  pc.onconnectionstatechange = () => {
    if (!call || call.pc !== pc) return;
    const s = pc.connectionState;
    if (s === 'connected' && call.state !== 'connected') {
      call.state = 'connected';
      call.started = Date.now();
      show('Connected · 0:00', ['hangup']);
      call.timer = setInterval(() => {
        if (call && call.state === 'connected') {
          $('call-status').textContent = 'Connected · ' + duration((Date.now() - call.started) / 1000);
        }
      }, 1000);
    } else if (s === 'failed') {
      hangup('failed');
    }
  };
  for (const t of call.local ? call.local.getTracks() : []) pc.addTrack(t, call.local);
  return pc;
}

async function flushIce() {
  const pc = call && call.pc;
  if (!pc || !pc.remoteDescription) return;
  const q = call.pendingIce;
  call.pendingIce = [];
  for (const f of q) await addIce(pc, f);
}

async function addIce(pc, f) {
  if (!f.candidate) return; // end of candidates
  try {
    await pc.addIceCandidate({ candidate: f.candidate, sdpMid: f.sdp_mid ?? null,
      sdpMLineIndex: Number.isInteger(f.sdp_mline_index) ? f.sdp_mline_index : null });
  } catch (e) {
    console.warn('BerryChat: bad ICE candidate', e);
  }
}

async function accept() {
  if (!call || call.role !== 'callee' || call.state !== 'ringing') return;
  call.state = 'connecting';
  show('Connecting…', ['hangup']);
  try {
    await getMedia();
  } catch {
    reject();
    ended('media');
    return;
  }
  try {
    const r = await ctx.sock().request('call.accept', { call: call.id });
    if (!call) return;
    if (Array.isArray(r.ice_servers)) call.iceServers = r.ice_servers;
    peerConnection();
  } catch {
    ended('failed');
  }
}

function reject() {
  if (!call) return;
  const id = call.id;
  ctx.sock().request('call.reject', { call: id }).catch(() => {});
  cleanup();
  panel().hidden = true;
}

function hangup(reason = 'hangup') {
  if (!call) return;
  if (call.id) ctx.sock().request('call.hangup', { call: call.id }).catch(() => {});
  ended(reason);
}

function cleanup() {
  if (!call) return;
  if (call.sock) call.sock.removeEventListener('welcome', call.onWelcome);
  if (call.timer) clearInterval(call.timer);
  if (call.pc) {
    try { call.pc.close(); } catch { /* already closed */ }
  }
  if (call.local) for (const t of call.local.getTracks()) t.stop();
  $('call-remote').srcObject = null;
  $('call-local').srcObject = null;
  call = null;
  updateCallButtons(ctx.conv());
}

// ---- pushes (call.*) --------------------------------------------------------------------
export async function onCallPush(f) {
  if (!ctx || typeof f.call !== 'string') return;
  if (f.type === 'call.incoming') {
    if (call) return; // this device is busy with another call; the others may ring
    call = newCall(f.call, f.conv, f.from, f.media === 'video' ? 'video' : 'audio', 'callee',
      f.ice_servers);
    show(`Incoming ${call.media === 'video' ? 'video' : 'voice'} call`, ['accept', 'reject']);
    updateCallButtons(ctx.conv());
    ctx.sock().request('call.ringing', { call: f.call }).catch(() => {});
    return;
  }
  if (!call || call.id !== f.call) return;
  if (f.type === 'call.ringing') {
    if (call.state === 'calling') show('Ringing…', ['hangup']);
  } else if (f.type === 'call.accepted') {
    call.state = 'connecting';
    show('Connecting…', ['hangup']);
    try {
      await getMedia();
    } catch {
      hangup('media');
      return;
    }
    if (!call) return;
    const pc = peerConnection();
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    ctx.sock().request('call.sdp', { call: call.id, sdp_type: 'offer', sdp: offer.sdp })
      .catch(() => {});
  } else if (f.type === 'call.sdp') {
    const pc = call.pc;
    if (!pc || typeof f.sdp !== 'string') return;
    await pc.setRemoteDescription({ type: f.sdp_type, sdp: f.sdp });
    if (f.sdp_type === 'offer') {
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      ctx.sock().request('call.sdp', { call: call.id, sdp_type: 'answer', sdp: answer.sdp })
        .catch(() => {});
    }
    await flushIce();
  } else if (f.type === 'call.ice') {
    if (call.pc && call.pc.remoteDescription) await addIce(call.pc, f);
    else call.pendingIce.push(f);
  } else if (f.type === 'call.ended') {
    ended(f.reason || 'hangup');
  }
}

// ---- setup ------------------------------------------------------------------------------
export function setupCalls(context) {
  ctx = context;
  document.head.append(el('link', { rel: 'stylesheet', href: 'calls.css' }));
  const head = document.querySelector('#chat .chat-bar');
  const can = typeof RTCPeerConnection === 'function' && navigator.mediaDevices;
  for (const [id, media, sym, label] of [['call-audio', 'audio', '📞', 'Voice call'],
    ['call-video', 'video', '📹', 'Video call']]) {
    head.append(el('button', { id, type: 'button', class: 'icon', text: sym, title: label,
      'aria-label': label, hidden: true, disabled: !can, onclick: () => startCall(media) }));
  }
  addEventListener('beforeunload', () => { if (call) hangup(); });
  window.__berryCall = () => (call ? { id: call.id, state: call.state,
    pc: call.pc ? call.pc.connectionState : null } : null);
}
