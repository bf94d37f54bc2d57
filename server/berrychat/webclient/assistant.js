// BerryChat web client: bot messages and the AI assistant's streamed answers
// (docs/protocol.md §19-20). While the assistant writes, `msg.stream` pushes carry the whole
// text so far: it is drawn in place in a bubble of its own (keyed by `sid`). The durable
// message (same `sid` in its `stream` field) replaces that bubble when it arrives.

let ctx = null;
const live = new Map(); // sid -> {conv, from, text}

const $ = (id) => document.getElementById(id);

export function botBadge(m) {
  const b = document.createElement('span');
  b.className = 'bot-badge' + (m && m.error ? ' bot-error' : '');
  b.textContent = 'bot';
  b.title = 'Messages from a bot or the AI assistant';
  return b;
}

function bubbleFor(s, sid) {
  const ol = $('messages');
  let li = ol.querySelector(`li[data-sid="${CSS.escape(sid)}"]`);
  if (!li) {
    li = document.createElement('li');
    li.className = 'msg streaming';
    li.dataset.seq = '';
    li.dataset.sid = sid;
    const bubble = document.createElement('div');
    bubble.className = 'bubble';
    const who = document.createElement('div');
    who.className = 'who';
    who.textContent = ctx.userName(s.from);
    const text = document.createElement('div');
    text.className = 'text';
    text.setAttribute('aria-busy', 'true');
    bubble.append(who, botBadge(), text);
    li.append(bubble);
    ol.append(li);
  }
  return li;
}

function draw(sid) {
  const s = live.get(sid);
  const c = ctx.conv();
  if (!s || !c || c.id !== s.conv) return;
  const li = bubbleFor(s, sid);
  const t = li.querySelector('.text');
  t.textContent = s.text || '…';
  li.classList.toggle('thinking', !s.text);
  ctx.scrollToBottom();
}

// A `msg.stream` push: the assistant's answer so far.
export function onStreamPush(f) {
  if (!ctx || typeof f.sid !== 'string' || typeof f.text !== 'string') return;
  live.set(f.sid, { conv: f.conv, from: f.from, text: f.text });
  if (live.size > 50) live.delete(live.keys().next().value);
  draw(f.sid);
}

// A `msg` push: the stored answer replaces its streamed bubble.
export function streamDone(ev) {
  if (!ev || typeof ev.stream !== 'string') return;
  live.delete(ev.stream);
  const li = $('messages').querySelector(`li[data-sid="${CSS.escape(ev.stream)}"]`);
  if (li) li.remove();
}

export function setupAssistant(context) {
  ctx = context;
}
