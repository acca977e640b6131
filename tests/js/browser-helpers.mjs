// Headless Chromium for the browser tests: Debian's /usr/bin/chromium, driven by playwright-core.

import { existsSync } from "node:fs";
import { chromium } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";
export const MISSING = `${CHROMIUM} is missing: these tests need Debian's Chromium (apt-get install -y chromium)`;
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Whether Chromium is installed: a test that needs it fails with MISSING otherwise (a failing hook would only
 * cancel the tests). */
export const hasChromium = () => existsSync(CHROMIUM);

/** A headless Chromium. */
export function launchChromium() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
}
