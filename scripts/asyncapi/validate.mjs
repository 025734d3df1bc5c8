// Parse an AsyncAPI document with the reference parser (@asyncapi/parser) and print what it
// found as one JSON object: {"valid", "errors", "warnings", "channels", "messages"}.
// Exit 0 when the document is valid (no error diagnostics), 1 otherwise.
// Usage: node validate.mjs ../../schemas/asyncapi.json
import { Parser, fromFile } from '@asyncapi/parser';

const [path] = process.argv.slice(2);
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
// Spectral severities: 0 error, 1 warning, 2 information, 3 hint.
const show = (d) => ({ code: d.code, message: d.message, path: d.path.join('.') });
const errors = diagnostics.filter((d) => d.severity === 0).map(show);
const warnings = diagnostics.filter((d) => d.severity === 1).map(show);
const report = {
  valid: document !== undefined && errors.length === 0,
  errors,
  warnings,
  channels: document ? document.channels().all().map((c) => c.address()) : [],
  messages: document ? document.messages().all().map((m) => m.name()) : [],
  payloadTitles: document
    ? document.messages().all().map((m) => (m.payload() ? m.payload().title() ?? null : null))
    : [],
};
console.log(JSON.stringify(report, null, 2));
process.exit(report.valid ? 0 : 1);
