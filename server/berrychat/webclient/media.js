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

function fileUrl(id) {
  return `/api/v1/files/${encodeURIComponent(id)}?token=${encodeURIComponent(ctx.token())}`;
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
    const img = el('img', { src: fileUrl(a.thumb || a.id), alt: name, width: String(w),
      height: String(h), loading: 'lazy' });
    wrap.append(el('a', { href: fileUrl(a.id), target: '_blank', rel: 'noopener',
      class: 'att-image', 'aria-label': `Open image ${name} (${a.width}×${a.height})` }, img));
  } else if (a.kind === 'voice' || a.kind === 'video') {
    const media = el(a.kind === 'voice' ? 'audio' : 'video', {
      controls: '', preload: 'metadata', src: fileUrl(a.id),
      poster: a.poster ? fileUrl(a.poster) : undefined,
      'aria-label': (a.kind === 'voice' ? 'Voice message' : 'Video ' + name) +
        (a.duration ? ', ' + duration(a.duration) : ''),
    });
    if (m.from !== ctx.me() && m.seq) {
      media.addEventListener('play', () => ctx.played(c, m), { once: true });
    }
    wrap.append(media);
    const info = [a.duration ? duration(a.duration) : '', m.played ? 'played' : '']
      .filter(Boolean).join(' · ');
    if (info) wrap.append(el('span', { class: 'att-info', text: info }));
  } else {
    wrap.append(el('a', { href: fileUrl(a.id), download: name, class: 'att-file',
      'aria-label': `Download ${name}, ${sizeText(a.size || 0)}` },
    el('span', { class: 'att-icon', 'aria-hidden': 'true', text: '📄' }),
    el('span', { class: 'att-name', text: name }),
    el('span', { class: 'att-size', text: sizeText(a.size || 0) })));
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
