// Publish a bgworker FileRequested from Node.js.
//
//   npm ci
//   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ BGWORKER_NAMESPACE=bgworker \
//     node publish.mjs event.json        # or: ... | node publish.mjs -
//
// 1. Validates the event against schemas/FileRequested.json with ajv (JSON Schema draft
//    2020-12, formats on) plus the schema's x-bgworker-* keywords, so a bad event is refused
//    here, before anything is published (exit 1, the errors as JSON on stderr).
// 2. Publishes it on a confirm channel to <namespace>.requests with routing key
//    file.requested and the properties bgworker's own publisher sets (bgworker/messaging/wire.py):
//    content type application/json, message id = the request id, type FileRequested,
//    persistent, mandatory, and the AMQP priority of the event's `priority`. Returns once
//    RabbitMQ has confirmed it; an unroutable or
//    refused message is an error (exit 2). Prints the request id.
//
//   node publish.mjs --cancel REQUEST_ID
//
// publishes a CancelRequested instead (validated against schemas/CancelRequested.json), with
// routing key request.cancel, message id <id>.cancel and type CancelRequested: the request
// stops (or, if it has not arrived yet, is never built). Idempotent.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import amqp from 'amqplib';

const HERE = dirname(fileURLToPath(import.meta.url));
const SCHEMAS = process.env.BGWORKER_SCHEMAS || join(HERE, '..', '..', '..', 'schemas');
const REQUESTED_KEY = 'file.requested';
const CANCEL_KEY = 'request.cancel';
// The event's priority as the AMQP message priority, as bgworker's own publisher sets it
// (bgworker/messaging/wire.py PRIORITIES): the broker orders the work queue by it.
const PRIORITIES = { low: 0, normal: 1, high: 5 };

// Nesting of a JSON value: an object or array is one level more than its deepest child.
function depth(value) {
  if (value === null || typeof value !== 'object') return 0;
  const children = Object.values(value);
  return 1 + (children.length ? Math.max(...children.map(depth)) : 0);
}

// The schema's own keywords (docs/reference.md, "The event contract"). Those that state a
// rule are checked; the others (x-bgworker-tzdata: which tz database the enum comes from) are
// declared as annotations, so ajv's strict mode accepts them.
const RULES = {
  // Compact UTF-8 JSON, non-ASCII not escaped: what JSON.stringify writes.
  'x-bgworker-max-json-bytes': (limit, data) =>
    Buffer.byteLength(JSON.stringify(data), 'utf8') <= limit,
  'x-bgworker-max-depth': (limit, data) => depth(data) <= limit,
};

function keywordsOf(schema, found = new Set()) {
  if (schema && typeof schema === 'object') {
    for (const [key, value] of Object.entries(schema)) {
      if (key.startsWith('x-bgworker-')) found.add(key);
      keywordsOf(value, found);
    }
  }
  return found;
}

export function loadValidator(schemasDir = SCHEMAS, model = 'FileRequested') {
  const schema = JSON.parse(readFileSync(join(schemasDir, `${model}.json`), 'utf8'));
  const ajv = new Ajv2020({ allErrors: true, strict: true, allowUnionTypes: true });
  addFormats(ajv);
  for (const keyword of keywordsOf(schema)) {
    const rule = RULES[keyword];
    ajv.addKeyword(
      rule
        ? { keyword, schemaType: 'number', validate: (limit, data) => rule(limit, data) }
        : { keyword },
    );
  }
  const validate = ajv.compile(schema);
  const maxBodyBytes = schema['x-bgworker-max-body-bytes'];
  return (event) => {
    const errors = [];
    if (!validate(event)) {
      for (const e of validate.errors) {
        errors.push({ location: e.instancePath || '(body)', message: `${e.keyword}: ${e.message}` });
      }
    }
    const size = Buffer.byteLength(JSON.stringify(event), 'utf8');
    if (maxBodyBytes !== undefined && size > maxBodyBytes) {
      errors.push({ location: '(body)', message: `${size} bytes; the limit is ${maxBodyBytes}` });
    }
    return errors;
  };
}

export async function publish(url, namespace, event) {
  return send(url, namespace, REQUESTED_KEY, event, event.id, 'FileRequested');
}

export async function cancel(url, namespace, requestId) {
  const body = { id: requestId };
  return send(url, namespace, CANCEL_KEY, body, `${requestId}.cancel`, 'CancelRequested');
}

async function send(url, namespace, key, event, messageId, type) {
  const connection = await amqp.connect(url);
  // A channel error (no such exchange: 404) is reported by the promise below; without a
  // listener Node would also throw it as an unhandled 'error' event.
  connection.on('error', () => {});
  try {
    const channel = await connection.createConfirmChannel();
    let returned = null;
    // mandatory: a message no queue is bound for comes back instead of vanishing.
    channel.on('return', (message) => {
      returned = message.fields.replyText;
    });
    const body = Buffer.from(JSON.stringify(event), 'utf8');
    await new Promise((resolve, reject) => {
      channel.on('error', (err) => reject(new Error(`channel closed: ${err.message}`)));
      channel.publish(
        `${namespace}.requests`,
        key,
        body,
        {
          contentType: 'application/json',
          messageId,
          type,
          persistent: true,
          mandatory: true,
          priority: PRIORITIES[event.priority ?? 'normal'],
        },
        (err) => (err ? reject(new Error('the broker refused the message (nack)')) : resolve()),
      );
    });
    // A return arrives before the confirm of the same message (AMQP 0-9-1).
    if (returned !== null) throw new Error(`unroutable: ${returned}`);
    await channel.close();
  } finally {
    await connection.close().catch(() => {});
  }
}

async function main() {
  const [path, cancelId] = process.argv.slice(2);
  if (!path || (path === '--cancel' && !cancelId)) {
    console.error('usage: node publish.mjs EVENT.json   (or - for standard input)');
    console.error('       node publish.mjs --cancel REQUEST_ID');
    process.exit(64);
  }
  const cancelling = path === '--cancel';
  const event = cancelling
    ? { id: cancelId }
    : JSON.parse(readFileSync(path === '-' ? 0 : path, 'utf8'));
  const errors = loadValidator(SCHEMAS, cancelling ? 'CancelRequested' : 'FileRequested')(event);
  if (errors.length) {
    console.error(JSON.stringify({ refused: event.id ?? null, errors }, null, 2));
    process.exit(1);
  }
  const url = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/';
  const namespace = process.env.BGWORKER_NAMESPACE || 'bgworker';
  try {
    await (cancelling ? cancel(url, namespace, event.id) : publish(url, namespace, event));
  } catch (err) {
    console.error(`not published: ${err.message}`);
    process.exit(2);
  }
  console.log(event.id);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await main();
}
