// Hearth: live readings, progress and pairing countdown from the server's event stream.
// Served as a static file (no inline script: the CSP allows scripts from this origin only).
'use strict';

function setText(selector, text) {
  for (const el of document.querySelectorAll(selector)) {
    if (el.textContent !== text) el.textContent = text;
  }
}

function apply(state) {
  const table = document.querySelector('table.devices');
  if (table && table.dataset.ids !== state.ids) {
    window.location.reload(); // a device came or went: render the page anew
    return;
  }
  for (const [id, d] of Object.entries(state.devices)) {
    setText(`[data-reading="${CSS.escape(id)}"]`, d.reading);
    for (const el of document.querySelectorAll(`[data-availability="${CSS.escape(id)}"]`)) {
      el.textContent = d.availability;
      el.className = `badge ${d.availability}`;
    }
  }
  for (const [id, p] of Object.entries(state.progress)) {
    for (const bar of document.querySelectorAll(`progress[data-progress="${CSS.escape(id)}"]`)) {
      if (p.pct !== null) bar.value = p.pct;
    }
    setText(`[data-progress-label="${CSS.escape(id)}"]`, p.label);
  }
  const waiting = document.querySelector('[data-waiting]');
  if (waiting && Number(waiting.dataset.waiting) !== state.pairing.waiting) {
    window.location.reload(); // a sensor started (or stopped) waiting for its PIN
    return;
  }
  const countdown = document.querySelector('[data-countdown]');
  if (countdown) {
    if (!state.pairing.open) { window.location.reload(); return; }
    countdown.dataset.countdown = String(state.pairing.closes_in_s);
    countdown.textContent = String(state.pairing.closes_in_s);
  }
  setText('[data-attempts]', String(state.pairing.attempts_left));
}

function tick() {
  const countdown = document.querySelector('[data-countdown]');
  if (!countdown) return;
  const left = Math.max(0, Number(countdown.dataset.countdown) - 1);
  countdown.dataset.countdown = String(left);
  countdown.textContent = String(left);
}

function guardErase() {
  const input = document.querySelector('[data-confirm-word]');
  const button = document.querySelector('[data-erase]');
  if (!input || !button) return;
  const update = () => { button.disabled = input.value.trim() !== input.dataset.confirmWord; };
  input.addEventListener('input', update);
  update();
}

document.addEventListener('DOMContentLoaded', () => {
  guardErase();
  setInterval(tick, 1000);
  if (document.body.dataset.live) {
    const source = new EventSource('/live');
    source.onmessage = (e) => {
      try { apply(JSON.parse(e.data)); } catch (err) { console.error(err); }
    };
  }
});
