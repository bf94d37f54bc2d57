// BerryChat web client: attachments (docs/protocol.md §17) — uploads with progress, drag and
// drop, paste, voice recording, and the image / file / voice / video parts of messages.
// app.js owns the state and the messages; this module gets what it needs through `ctx`.

import { el } from './dom.js';

export const TEXTLIKE = new Set(['text', 'image', 'file', 'voice', 'video']);
const IMAGE_TYPES = ['image/jpeg', 'image/png', 'image/gif', 'image/webp'];
const AUDIO_TYPES = ['audio/ogg', 'audio/webm', 'audio/mp4', 'audio/mpeg', 'audio/wav',
  'audio/x-wav', 'audio/wave', 'audio/mp3', 'audio/x-m4a', 'audio/m4a'];
const VIDEO_TYPES = ['video/mp4', 'video/webm', 'video/quicktime', 'video/ogg'];
const LABEL = { image: '📷 Photo', file: '📄 File', voice: '🎤 Voice message', video: '🎬 Video' };

let ctx = null;
let limits = null;
let current = null; // the upload in progress: {xhr, name}
let recorder = null;

const $ = (id) => document.getElementById(id);

// The kind an upload becomes, and the Content-Type to declare for it.
export function kindOf(type) {
  const t = (type || '').split(';')[0].trim().toLowerCase();
  if (IMAGE_TYPES.includes(t)) return ['image', t];
  if (AUDIO_TYPES.includes(t)) return ['voice', t];
  if (VIDEO_TYPES.includes(t)) return ['video', t];
  // other image/audio/video types (SVG, FLAC, …) travel as plain files
  return ['file', t && !/^(image|audio|video)\//.test(t) ? t : 'application/octet-stream'];
}

export function mediaLabel(m) {
  const a = m.attachment;
  if (!a) return '';
  return a.kind === 'file' ? '📄 ' + (a.name || 'File') : (LABEL[a.kind] || 'Attachment');
}

export function sizeText(n) {
  if (n < 1024) return n + ' B';
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KB';
  return (n / 1024 / 1024).toFixed(1) + ' MB';
}

// ---- signed download links (§17) -----------------------------------------------------------
// <img>, <audio>, <video> and <a> cannot send the Authorization header, and the session token
// must never be in a URL: the server signs short-lived links, asked for in batches.
// id -> {url, until, life}: `until` on this browser's clock (from the server's expires_in, so a
// skewed clock does not matter), `life` the link's lifetime; for the session `linksFor`
const links = new Map();
let linksFor = null;
let wanted = new Map(); // id -> [resolve, …] waiting for the next batch
let batchTimer = null;
const FRESH_MS = 120000; // a link that expires sooner (or within a quarter of its life) is renewed

function session() {
  if (linksFor !== ctx.token()) { // another login: links are bound to the user
    links.clear();
    linksFor = ctx.token();
  }
  return linksFor;
}

function fresh(id) {
  session();
  const l = links.get(id);
  return l && l.until - Date.now() > Math.min(FRESH_MS, l.life / 4) ? l.url : null;
}

async function fetchLinks() {
  batchTimer = null;
  const batch = wanted;
  wanted = new Map();
  const ids = [...batch.keys()];
  const token = session();
  for (let i = 0; i < ids.length; i += 200) {
    const part = ids.slice(i, i + 200);
    let got = {};
    try {
      const r = await fetch('/api/v1/files/links', {
        method: 'POST', cache: 'no-store',
        headers: { 'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json' },
        body: JSON.stringify({ ids: part }),
      });
      const d = await r.json();
      if (r.ok && d && d.links && token === linksFor) {
        got = d.links;
        const life = (typeof d.expires_in === 'number' ? d.expires_in : 60) * 1000;
        const until = Date.now() + life;
        for (const id of part) {
          if (typeof got[id] === 'string') links.set(id, { url: got[id], until, life });
        }
      }
    } catch { /* offline: the elements stay without a source until they are shown again */ }
    for (const id of part) for (const resolve of batch.get(id)) resolve(got[id] || null);
  }
}

// A signed URL for a file id (cached while it stays valid for more than two minutes).
export function fileLink(id, force = false) {
  const url = !force && fresh(id);
  if (url) return Promise.resolve(url);
  return new Promise((resolve) => {
    if (!wanted.has(id)) wanted.set(id, []);
    wanted.get(id).push(resolve);
    if (!batchTimer) batchTimer = setTimeout(fetchLinks, 0);
  });
}

// Give `node[attr]` the signed URL of `id`; ask for a new one when the old one has expired
// (an <img>/<audio>/<video> that fails to load, a link clicked late).
function linkTo(node, attr, id) {
  const set = (url) => { if (url) node.setAttribute(attr, url); };
  fileLink(id).then(set);
  if (node.tagName === 'A') {
    let renewed = false;
    node.addEventListener('click', (e) => {
      const url = fresh(id);
      if (url) {
        if (node.getAttribute(attr) !== url) set(url); // renewed meanwhile: follow the new one
        return;
      }
      if (renewed) return; // the click below, with the new link: follow it
      e.preventDefault();
      fileLink(id, true).then((u) => {
        if (!u) return;
        set(u);
        renewed = true;
        try { node.click(); } finally { renewed = false; }
      });
    });
  } else if (attr === 'src') {
    let last = 0;
    node.addEventListener('error', () => {
      const url = fresh(id);
      if (url && node.getAttribute(attr) !== url) {
        set(url);
        return;
      }
      if (Date.now() - last < 60000) return; // a real failure (gone, no access): no loop
      last = Date.now();
      fileLink(id, true).then(set);
    });
  }
  return node;
}

async function loadLimits() {
  if (limits) return limits;
  try {
    const r = await fetch('/api/v1/uploads/limits', { cache: 'no-store' });
    const d = await r.json();
    if (d && d.limits) limits = d.limits;
  } catch { /* the server checks anyway */ }
  return limits || {};
}

// ---- the upload bar ---------------------------------------------------------------------
function status(text, kind = '') {
  const bar = $('upload-bar');
  bar.hidden = !text;
  bar.dataset.kind = kind;
  $('upload-status').textContent = text;
  $('upload-progress').hidden = kind !== 'busy';
  $('upload-cancel').hidden = kind !== 'busy';
  $('upload-dismiss').hidden = kind === 'busy' || !text;
}

// Upload one file (a File or Blob) and send it as a message in the open conversation.
export async function sendFile(file, name) {
  const c = ctx.conv();
  if (!c) return;
  if (current) {
    status('Wait for the current upload to finish.', 'bad');
    return;
  }
  const [kind, type] = kindOf(file.type);
  const fname = name || file.name || (kind === 'voice' ? 'voice message' : 'file');
  const lim = (await loadLimits())[kind];
  if (lim && file.size > lim) {
    status(`“${fname}” is ${sizeText(file.size)}: ${kind === 'file' ? 'files' : kind + ' uploads'}` +
      ` can be at most ${sizeText(lim)}.`, 'bad');
    return;
  }
  const xhr = new XMLHttpRequest();
  current = { xhr, name: fname };
  $('upload-progress').value = 0;
  status(`Uploading “${fname}”…`, 'busy');
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) $('upload-progress').value = Math.round((e.loaded / e.total) * 100);
  };
  const done = new Promise((resolve) => {
    xhr.onloadend = () => resolve();
  });
  xhr.open('POST', '/api/v1/uploads?name=' + encodeURIComponent(fname));
  xhr.setRequestHeader('Authorization', 'Bearer ' + ctx.token());
  xhr.setRequestHeader('Content-Type', type);
  xhr.send(file);
  await done;
  current = null;
  let data = null;
  try {
    data = JSON.parse(xhr.responseText);
  } catch { /* not JSON */ }
  if (xhr.status === 201 && data && data.attachment) {
    status('');
    ctx.send(c, data.attachment);
    return;
  }
  if (xhr.status === 0) {
    status(xhr.__cancelled ? 'Upload cancelled.' : `“${fname}” could not be uploaded: ` +
      'the connection failed (is it too large?). Try again.', 'bad');
    return;
  }
  const err = (data && data.error) || {};
  status(`“${fname}” was not sent: ${err.message || 'HTTP ' + xhr.status}` +
    (err.retryable ? ' Try again later.' : ''), 'bad');
}

// ---- voice recording ----------------------------------------------------------------------
function recordType() {
  for (const t of ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/webm', 'audio/mp4']) {
    if (window.MediaRecorder && MediaRecorder.isTypeSupported(t)) return t;
  }
  return '';
}

async function toggleRecording() {
  const btn = $('record');
  if (recorder) {
    recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    status('Voice messages need a browser with microphone recording.', 'bad');
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    status('No microphone: ' + (e.message || e.name), 'bad');
    return;
  }
  const type = recordType();
  const rec = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
  const parts = [];
  const started = Date.now();
  rec.ondataavailable = (e) => { if (e.data && e.data.size) parts.push(e.data); };
  rec.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    recorder = null;
    btn.setAttribute('aria-pressed', 'false');
    btn.setAttribute('aria-label', 'Record a voice message');
    btn.textContent = '🎤';
    const blob = new Blob(parts, { type: (rec.mimeType || type || 'audio/webm').split(';')[0] });
    if (Date.now() - started < 300 || !blob.size) {
      status('Voice message too short.', 'bad');
      return;
    }
    const ext = blob.type.includes('ogg') ? 'ogg' : blob.type.includes('mp4') ? 'm4a' : 'webm';
    sendFile(blob, `voice-${new Date().toISOString().slice(0, 19).replace(/:/g, '')}.${ext}`);
  };
  recorder = rec;
  rec.start(250);
  btn.setAttribute('aria-pressed', 'true');
  btn.setAttribute('aria-label', 'Stop recording and send');
  btn.textContent = '⏹';
  status('Recording… press ⏹ to send.', 'rec');
}

// ---- message parts ------------------------------------------------------------------------
function duration(s) {
  if (typeof s !== 'number') return '';
  const t = Math.round(s);
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, '0')}`;
}

// The attachment part of a message bubble.
export function attachmentEl(c, m) {
  const a = m.attachment;
  if (!a || typeof a.id !== 'string') return null;
  const name = typeof a.name === 'string' ? a.name : 'file';
  const wrap = el('div', { class: 'att att-' + a.kind });
  if (a.kind === 'image') {
    const w = a.thumb_width || 240;
    const h = a.thumb_height || 180;
    const img = linkTo(el('img', { alt: name, width: String(w), height: String(h),
      loading: 'lazy' }), 'src', a.thumb || a.id);
    wrap.append(linkTo(el('a', { target: '_blank', rel: 'noopener', class: 'att-image',
      'aria-label': `Open image ${name} (${a.width}×${a.height})` }, img), 'href', a.id));
  } else if (a.kind === 'voice' || a.kind === 'video') {
    const media = linkTo(el(a.kind === 'voice' ? 'audio' : 'video', {
      controls: '', preload: 'metadata',
      'aria-label': (a.kind === 'voice' ? 'Voice message' : 'Video ' + name) +
        (a.duration ? ', ' + duration(a.duration) : ''),
    }), 'src', a.id);
    if (a.poster) linkTo(media, 'poster', a.poster);
    if (m.from !== ctx.me() && m.seq) {
      media.addEventListener('play', () => ctx.played(c, m), { once: true });
    }
    wrap.append(media);
    const info = [a.duration ? duration(a.duration) : '', m.played ? 'played' : '']
      .filter(Boolean).join(' · ');
    if (info) wrap.append(el('span', { class: 'att-info', text: info }));
  } else {
    wrap.append(linkTo(el('a', { download: name, class: 'att-file',
      'aria-label': `Download ${name}, ${sizeText(a.size || 0)}` },
    el('span', { class: 'att-icon', 'aria-hidden': 'true', text: '📄' }),
    el('span', { class: 'att-name', text: name }),
    el('span', { class: 'att-size', text: sizeText(a.size || 0) })), 'href', a.id));
  }
  return wrap;
}

// ---- wiring -------------------------------------------------------------------------------
export function setupMedia(context) {
  ctx = context;
  const attach = $('attach');
  const input = $('file-input');
  attach.disabled = false;
  attach.removeAttribute('aria-disabled');
  attach.addEventListener('click', () => input.click());
  input.addEventListener('change', () => {
    const files = [...input.files];
    input.value = '';
    if (files.length) sendFile(files[0]);
  });
  $('record').addEventListener('click', toggleRecording);
  $('upload-cancel').addEventListener('click', () => {
    if (current) {
      current.xhr.__cancelled = true;
      current.xhr.abort();
    }
  });
  $('upload-dismiss').addEventListener('click', () => status(''));
  const chat = $('chat');
  chat.addEventListener('dragover', (e) => {
    if (ctx.conv() && e.dataTransfer && [...e.dataTransfer.types].includes('Files')) {
      e.preventDefault();
      chat.classList.add('dropping');
    }
  });
  chat.addEventListener('dragleave', (e) => {
    if (!chat.contains(e.relatedTarget)) chat.classList.remove('dropping');
  });
  chat.addEventListener('drop', (e) => {
    chat.classList.remove('dropping');
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f && ctx.conv()) {
      e.preventDefault();
      sendFile(f);
    }
  });
  $('input').addEventListener('paste', (e) => {
    const f = e.clipboardData && [...e.clipboardData.files][0];
    if (f) {
      e.preventDefault();
      sendFile(f, f.name && f.name !== 'image.png' ? f.name : 'pasted image.png');
    }
  });
}
