// The owner's journey through Hearth's web UI in headless Debian Chromium (playwright-core):
// setup with the one-time code, log out and in, pair a simulated sensor by its PIN, watch its
// live reading, set the thermostat's setpoint and see the sensor report it, approve an update and
// watch the progress bar reach 100 %, see an isolated sensor's reason, remove it after the
// confirmation step, check the security pages, erase everything and see the confirmation.
//
// Run by tests/tests/it/browser.rs, which owns the hub and the simulator: this script prints
// `ASK <what>` and reads the answer on stdin, `STEP <name>` as it goes, and `DONE` at the end.
// The test verifies the certificate fingerprint itself, so the browser may skip its own check.

import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const url = process.env.HEARTH_URL;
const code = process.env.HEARTH_SETUP_CODE;
const shots = process.env.HEARTH_SCREENSHOTS;
const docs = process.env.HEARTH_DOCS; // also write the README's screenshots here, if set
const password = 'warm kitchen 2026';

const answers = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(what) {
  console.log(`ASK ${what}`);
  const { value, done } = await answers.next();
  if (done) throw new Error(`no answer for ${what}`);
  return value.trim();
}
const step = (name) => console.log(`STEP ${name}`);

mkdirSync(shots, { recursive: true });
const userDataDir = mkdtempSync(join(tmpdir(), 'hearth-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  ignoreHTTPSErrors: true,
  viewport: { width: 1100, height: 760 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const page = context.pages()[0] ?? await context.newPage();
page.setDefaultTimeout(60_000);
const violations = [];
// A script or style the CSP blocks shows here (a missing favicon or the live stream ending at
// log-out are not violations).
page.on('console', (m) => {
  if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) violations.push(m.text());
});
page.on('pageerror', (e) => violations.push(String(e)));

async function shot(name, docName) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  if (docs && docName) await page.screenshot({ path: join(docs, docName), fullPage: false });
}

async function expectText(selector, pattern) {
  await page.locator(selector).filter({ hasText: pattern }).first().waitFor();
}

try {
  step('setup');
  await page.goto(url);
  await page.waitForURL('**/setup');
  await shot('01-setup');
  await page.fill('input[name=code]', code);
  await page.fill('input[name=user]', 'owner');
  await page.fill('input[name=password]', password);
  await page.fill('input[name=confirm]', password);
  await page.click('button:has-text("Create the owner account")');
  await page.waitForURL(`${url}`);
  await expectText('main', /No devices yet/);

  step('login');
  await page.click('button:has-text("Log out")');
  await page.waitForURL('**/login');
  await page.fill('input[name=user]', 'owner');
  await page.fill('input[name=password]', 'not the password');
  await page.click('button:has-text("Log in")');
  await expectText('.notice.error', /Wrong user name or password/);
  await page.fill('input[name=user]', 'owner');
  await page.fill('input[name=password]', password);
  await page.click('button:has-text("Log in")');
  await page.waitForURL(`${url}`);

  step('pairing');
  await page.goto(`${url}pairing`);
  await page.click('button:has-text("Open pairing")');
  await expectText('.status', /Pairing is open/);
  const before = Number(await page.locator('[data-countdown]').textContent());
  await page.waitForFunction((b) => Number(document.querySelector('[data-countdown]').textContent) < b, before);
  const pin = await ask('pin');
  // The page reloads itself when the live stream reports a sensor waiting for its PIN.
  await page.locator('ul[data-waiting="1"]').waitFor();
  await page.fill('input[name=pin]', pin);
  await shot('02-pairing');
  await page.click('button:has-text("Pair")');
  await expectText('.notice.ok', /Paired/);

  step('dashboard');
  await page.goto(url);
  const cell = page.locator('[data-reading]').first();
  await page.waitForFunction(() => /temp\w* \d/i.test(document.querySelector('[data-reading]')?.textContent ?? ''));
  const first = await cell.textContent();
  // Live: the value changes without a reload (the stream updates the cell).
  await page.waitForFunction((f) => document.querySelector('[data-reading]').textContent !== f, first);
  await page.reload();
  await page.locator('svg.chart polyline').first().waitFor();
  await shot('03-dashboard', 'dashboard.png');

  step('setpoint');
  // The thermostat's page has a setpoint control (the same range as MQTT's `…/set`).
  await page.click('table.devices a[href^="/devices/"]');
  await page.locator('form[data-setpoint] input[name=value]').waitFor();
  if ((await page.locator('form[data-setpoint] input[name=value]').getAttribute('max')) !== '35') {
    throw new Error('the setpoint control does not carry the hub\'s range');
  }
  await page.fill('form[data-setpoint] input[name=value]', '23.5');
  await page.click('form[data-setpoint] button');
  await expectText('.notice.ok', /Setpoint sent/);
  // The hub relays it with the acknowledgement of the sensor's next report.
  await ask('setpoint');
  await page.goto(url);
  await page.waitForFunction(() => /setpoint 23\.5/i.test(document.querySelector('[data-reading]')?.textContent ?? ''));
  await shot('03b-setpoint');

  step('update');
  await ask('update');
  await page.goto(`${url}updates`);
  await expectText('.release', /CVE-2026-0002/);
  await expectText('.notice.warning', /Disruptive/);
  await page.click('button[data-approve]');
  await page.waitForURL('**/updates?m=approved');
  await page.waitForFunction(() => {
    const bar = document.querySelector('progress[data-progress]');
    return bar && bar.value > 0 && bar.value < 100;
  }).catch(() => {}); // a fast delivery may finish before the page looks
  await shot('04-update-progress');
  await page.waitForFunction(() => document.querySelector('progress[data-progress]')?.value === 100, null, { timeout: 120_000 });
  await expectText('[data-progress-label]', /100 %/);
  await shot('05-update-done');

  step('isolated');
  const isolated = await ask('isolated');
  await page.goto(`${url}isolated`);
  if (isolated !== 'none') {
    await expectText('[data-isolated] .reason', new RegExp(isolated));
  } else {
    await expectText('main', /No device is isolated/);
  }
  await shot('06-isolated');

  step('remove');
  // Removing a device asks first; the isolated button goes.
  await page.click('[data-isolated] h3 a');
  await page.click('button:has-text("Remove this device")');
  await expectText('main', /Its keys and all its readings are erased/);
  await shot('06b-remove-confirm');
  if (!(await ask('still-paired')).startsWith('yes')) throw new Error('removed before the confirmation');
  await page.click('[data-confirm-remove] button');
  await expectText('.notice.ok', /Device removed/);
  if (!(await ask('removed')).startsWith('yes')) throw new Error('not removed after the confirmation');

  step('security');
  await page.goto(`${url}security`);
  await expectText('[data-checks-ok]', /met now/);
  await expectText('table.checks', /5\.1-1/);
  await shot('07-security-status', 'security-status.png');
  await page.goto(`${url}events`);
  await expectText('[data-event="web_login_failed"]', /Failed web logins/);
  await shot('08-security-events');

  step('erase');
  await page.goto(`${url}privacy`);
  await expectText('main', /sends no telemetry/);
  if (!(await page.locator('[data-erase]').isDisabled())) throw new Error('erase enabled before typing the word');
  await page.fill('input[name=confirm]', 'ERASE');
  await page.click('[data-erase]');
  await expectText('.notice.ok', /Erase complete/);
  await shot('09-erased');
  // A factory reset: the hub restarts as a new hub (new certificate, new setup code) and
  // answers again within seconds.
  for (let attempt = 1; ; attempt++) {
    try {
      await page.goto(url);
      break;
    } catch (e) {
      if (attempt >= 60) throw e;
      await page.waitForTimeout(500);
    }
  }
  await page.waitForURL('**/setup');

  if (violations.length) throw new Error(`CSP violations or script errors: ${violations.join(' | ')}`);
  console.log('DONE');
} catch (e) {
  await shot('failure').catch(() => {});
  console.log(`FAIL ${String(e?.stack ?? e).replaceAll('\n', ' | ')}`);
  process.exitCode = 1;
} finally {
  await context.close().catch(() => {});
  process.exit(); // the stdin reader would keep node alive
}
