#!/usr/bin/env node
'use strict';
/*
 * A CouchDB-3-protocol test server for the worker's test-suite and the dev "run" command.
 *
 *   node server.js --host 127.0.0.1 --port 0 --admin admin:pass (--memory | --data DIR)
 *                  [--verbose] [--stop-on-stdin-close]
 *
 * Document storage, _all_docs, views, _bulk_docs, _local docs and _find come from express-pouchdb
 * on PouchDB 9. Everything express-pouchdb gets wrong for a CouchDB 3 client is handled here,
 * before a request reaches it (compared with the CouchDB 3 API reference,
 * https://docs.couchdb.org/en/stable/api/, and express-pouchdb's issue tracker):
 *  - _changes is served by this file: timeouts, heartbeats, longpoll, continuous, opaque string
 *    seqs, `pending`, _doc_ids/_selector filters, and no compression (so streams are not buffered);
 *  - admin credentials are required everywhere (CouchDB 3 with require_valid_user), 401 otherwise;
 *  - /_node/<name>/_config and /_config, with a server secret that survives restarts in --data mode;
 *  - every response is JSON with Content-Type application/json;
 *  - no request can kill the process.
 * Once listening it prints one JSON line on stdout, {"event":"couchdb_test_server_ready","url":...},
 * so a launcher started with --port 0 learns the port.
 */
const crypto = require('crypto');
const { EventEmitter } = require('events');
const fs = require('fs');
const path = require('path');
const express = require('express');
const expressPouchDB = require('express-pouchdb');
const cleanFilename = require('express-pouchdb/lib/clean-filename');
const { getOrCreateDB } = require('express-pouchdb/lib/create-or-delete-dbs');

// ---------------------------------------------------------------- command line
function parseArgs(argv) {
  const opts = { host: '127.0.0.1', port: 5984, admin: 'admin:pass', data: null, verbose: false,
    stopOnStdinClose: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--memory') opts.data = null;
    else if (arg === '--verbose') opts.verbose = true;
    else if (arg === '--stop-on-stdin-close') opts.stopOnStdinClose = true;
    else if (['--host', '--port', '--admin', '--data'].includes(arg) && i + 1 < argv.length) {
      opts[arg.slice(2)] = argv[++i];
    } else {
      process.stderr.write(`unknown argument ${arg}\nusage: node server.js --host H --port P ` +
        '--admin NAME:PASS (--memory | --data DIR) [--verbose] [--stop-on-stdin-close]\n');
      process.exit(2);
    }
  }
  opts.port = Number(opts.port);
  const colon = opts.admin.indexOf(':');
  if (colon < 1) { process.stderr.write('--admin must be NAME:PASSWORD\n'); process.exit(2); }
  opts.adminName = opts.admin.slice(0, colon);
  opts.adminPass = opts.admin.slice(colon + 1);
  return opts;
}
const args = parseArgs(process.argv.slice(2));

// A bad request must never take the server down: log whatever escapes and carry on.
process.on('uncaughtException', (err) => console.error('uncaught exception:', err));
process.on('unhandledRejection', (err) => console.error('unhandled rejection:', err));

// ---------------------------------------------------------------- PouchDB
let PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-adapter-leveldb'))
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-mapreduce'))
  .plugin(require('pouchdb-replication'))
  .plugin(require('pouchdb-find'));
const dataDir = args.data ? path.resolve(args.data) : null;
if (dataDir) {
  fs.mkdirSync(dataDir, { recursive: true });
  PouchDB = PouchDB.defaults({ adapter: 'leveldb', prefix: dataDir + path.sep });
} else {
  PouchDB = PouchDB.defaults({ adapter: 'memory' });
}

// express-pouchdb minus the parts we replace. 'compression' would buffer streamed _changes.
const pouchApp = expressPouchDB({
  mode: 'minimumForPouchDB',
  overrideMode: {
    include: ['routes/find'],
    exclude: ['compression', 'routes/changes', 'routes/root', 'routes/session-stub'],
  },
});

// ---------------------------------------------------------------- config (and the secret)
// Kept in DIR/server-config.json in --data mode so the secret (the key of CHT's credential
// vault) is the same after a restart; in --memory mode it is random but stable for the process.
const configFile = dataDir ? path.join(dataDir, 'server-config.json') : null;
function loadConfig() {
  if (configFile && fs.existsSync(configFile)) {
    try { return JSON.parse(fs.readFileSync(configFile, 'utf8')); } catch (e) {
      console.error(`ignoring unreadable ${configFile}: ${e.message}`);
    }
  }
  const secret = crypto.randomBytes(16).toString('hex');
  return {
    chttpd_auth: { secret, require_valid_user: 'true' },
    couch_httpd_auth: { secret, require_valid_user: 'true', timeout: '600' },
    chttpd: { changes_timeout: '60000' },
    couchdb: { uuid: crypto.randomBytes(16).toString('hex') },
  };
}
const config = loadConfig();
function saveConfig() {
  if (!configFile) return;
  // Synchronous write to a temp file + rename: writes cannot interleave and a kill -9 leaves
  // either the old or the new file, never a torn one.
  const tmp = `${configFile}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(config, null, 2) + '\n');
  fs.renameSync(tmp, configFile);
}
saveConfig();

// ---------------------------------------------------------------- helpers
function sendJSON(res, status, body) {
  if (res.headersSent) { res.end(); return; }
  // A Buffer, so express does not append "; charset=utf-8" (CouchDB sends plain application/json).
  res.status(status).set('Content-Type', 'application/json')
    .send(Buffer.from(JSON.stringify(body) + '\n'));
}
const badRequest = (res, reason) => sendJSON(res, 400, { error: 'bad_request', reason });
const sendPouchError = (res, err) => sendJSON(res, err.status || 500, {
  error: err.name && err.name !== 'Error' ? err.name : 'unknown_error',
  reason: err.reason || err.message || String(err),
});

// Seqs look like CouchDB 3's ("12-g1AAAA…"): the integer PouchDB seq plus an opaque suffix, so a
// client that parses or compares seqs breaks here as it would on a real cluster. Only the integer
// prefix is read back, so seqs stay valid across restarts.
function encodeSeq(dbName, n) {
  const hash = crypto.createHash('sha256').update(`${dbName}\u0000${n}`).digest('base64url');
  return `${n}-g1AAAA${hash.slice(0, 40)}`;
}
function decodeSeq(value) { // -> integer, 'now', or null when malformed
  if (value === undefined || value === null || value === '') return 0;
  let s = String(value).trim();
  if (s.startsWith('"') && s.endsWith('"')) s = s.slice(1, -1); // JSON-encoded by some clients
  if (s === 'now') return 'now';
  const m = /^(\d+)(-.*)?$/.exec(s);
  return m ? Number(m[1]) : null;
}

// CouchDB's query booleans/integers.
const isTrue = (v) => v === true || v === 'true';
function intParam(v, dflt) {
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  return Number.isFinite(n) && n >= 0 ? Math.floor(n) : NaN;
}

const DB_NAME = /^([a-z][a-z0-9_$()+/-]*|_users|_replicator|_global_changes)$/;

// Resolve req.params.db to the PouchDB instance express-pouchdb itself uses (same cache, so
// live changes see every write), or answer 404.
async function withDb(req, res, next) {
  const name = req.params.db;
  if (!DB_NAME.test(name)) return next('route');
  try {
    const fileName = cleanFilename(name);
    if (!(await PouchDB.allDbs()).includes(fileName)) {
      return sendJSON(res, 404, { error: 'not_found', reason: 'Database does not exist.' });
    }
    req.db = await getOrCreateDB(PouchDB, fileName);
    await pouchApp.dbWrapper.wrap(fileName, req.db);
  } catch (err) { return sendPouchError(res, err); }
  next();
}

// ---------------------------------------------------------------- app
const app = express();
app.disable('x-powered-by');
app.set('etag', false);
app.use((req, res, next) => {
  res.set('Server', 'CouchDB/3.3.3 (Erlang OTP/24) express-pouchdb test server');
  // express-pouchdb answers text/plain unless JSON is explicitly accepted.
  req.headers.accept = 'application/json';
  if (args.verbose) console.error(`${req.method} ${req.originalUrl}`);
  next();
});
const jsonBody = express.json({ type: () => true, limit: '256mb', strict: false });

// ---------------------------------------------------------------- authentication
function safeEqual(a, b) {
  const ha = crypto.createHash('sha256').update(String(a)).digest();
  const hb = crypto.createHash('sha256').update(String(b)).digest();
  return crypto.timingSafeEqual(ha, hb);
}
const SESSION_SECONDS = 600;
function sessionCookie(name) {
  const payload = `${name}:${Math.floor(Date.now() / 1000).toString(16).toUpperCase()}`;
  const mac = crypto.createHmac('sha256', config.chttpd_auth.secret).update(payload).digest('hex');
  return Buffer.from(`${payload}:${mac}`).toString('base64url');
}
function checkCookie(cookieHeader) { // -> user name or null
  const m = /(?:^|;\s*)AuthSession=([^;]+)/.exec(cookieHeader || '');
  if (!m) return null;
  const [name, time, mac] = Buffer.from(m[1], 'base64url').toString().split(':');
  if (!name || !time || !mac) return null;
  const expected = crypto.createHmac('sha256', config.chttpd_auth.secret)
    .update(`${name}:${time}`).digest('hex');
  const fresh = Date.now() / 1000 - parseInt(time, 16) < SESSION_SECONDS;
  return fresh && safeEqual(mac, expected) && name === args.adminName ? name : null;
}
const setSessionCookie = (res, name) => res.append('Set-Cookie',
  `AuthSession=${name ? sessionCookie(name) : ''}; Version=1; Path=/; HttpOnly` +
  (name ? `; Max-Age=${SESSION_SECONDS}` : '; Max-Age=0'));
const userCtx = (name) => ({ name, roles: name ? ['_admin'] : [] });

app.use((req, res, next) => {
  const auth = req.headers.authorization || '';
  if (auth.startsWith('Basic ')) {
    const decoded = Buffer.from(auth.slice(6), 'base64').toString();
    const colon = decoded.indexOf(':');
    const name = decoded.slice(0, colon);
    if (colon > 0 && safeEqual(name, args.adminName) &&
        safeEqual(decoded.slice(colon + 1), args.adminPass)) {
      req.user = name;
    } else {
      return sendJSON(res, 401, { error: 'unauthorized', reason: 'Name or password is incorrect.' });
    }
  } else {
    req.user = checkCookie(req.headers.cookie);
  }
  // Only the welcome, health and login endpoints are open, as with require_valid_user.
  const open = req.path === '/' || req.path === '/_up' || req.path === '/_session';
  if (!req.user && !open) {
    return sendJSON(res, 401, { error: 'unauthorized', reason: 'Authentication required.' });
  }
  next();
});

app.get('/', (req, res) => sendJSON(res, 200, {
  couchdb: 'Welcome', version: '3.3.3', git_sha: '00000000', uuid: config.couchdb.uuid,
  features: ['access-ready', 'partitioned', 'pluggable-storage-engines', 'reshard', 'scheduler'],
  vendor: { name: 'cht-rapidpro-worker test server (express-pouchdb, PouchDB 9)' },
}));
app.get('/_up', (req, res) => sendJSON(res, 200, { status: 'ok', seeds: {} }));

app.get('/_session', (req, res) => sendJSON(res, 200, {
  ok: true, userCtx: userCtx(req.user || null),
  info: { authentication_handlers: ['cookie', 'default'], authenticated: req.user ? 'default' : undefined },
}));
app.post('/_session', express.urlencoded({ extended: false }), jsonBody, (req, res) => {
  const { name, password } = req.body || {};
  if (!(safeEqual(name, args.adminName) && safeEqual(password, args.adminPass))) {
    return sendJSON(res, 401, { error: 'unauthorized', reason: 'Name or password is incorrect.' });
  }
  setSessionCookie(res, name);
  sendJSON(res, 200, { ok: true, ...userCtx(name) });
});
app.delete('/_session', (req, res) => { setSessionCookie(res, null); sendJSON(res, 200, { ok: true }); });

app.get('/_uuids', (req, res) => {
  const count = Math.min(intParam(req.query.count, 1) || 1, 1000);
  sendJSON(res, 200, { uuids: Array.from({ length: count }, () => crypto.randomBytes(16).toString('hex')) });
});

// ---------------------------------------------------------------- /_config
// CouchDB config values are strings; PUT takes a JSON string and answers the old value.
function configRoute(req, res) {
  const { section, key } = req.params;
  if (!section) return req.method === 'GET' ? sendJSON(res, 200, config)
    : sendJSON(res, 405, { error: 'method_not_allowed', reason: 'Only GET allowed' });
  if (!key) return req.method === 'GET' ? sendJSON(res, 200, config[section] || {})
    : sendJSON(res, 405, { error: 'method_not_allowed', reason: 'Only GET allowed' });
  const old = config[section] ? config[section][key] : undefined;
  if (req.method === 'GET') {
    return old === undefined ? sendJSON(res, 404, { error: 'not_found', reason: 'unknown_config_value' })
      : sendJSON(res, 200, old);
  }
  if (req.method === 'PUT') {
    if (typeof req.body !== 'string') return badRequest(res, 'config value must be a JSON string');
    config[section] = config[section] || {};
    config[section][key] = req.body;
    saveConfig();
    return sendJSON(res, 200, old === undefined ? '' : old);
  }
  if (req.method === 'DELETE') {
    if (old === undefined) return sendJSON(res, 404, { error: 'not_found', reason: 'unknown_config_value' });
    delete config[section][key];
    saveConfig();
    return sendJSON(res, 200, old);
  }
  sendJSON(res, 405, { error: 'method_not_allowed', reason: 'Only GET,PUT,DELETE allowed' });
}
app.get('/_node/:node', (req, res) => sendJSON(res, 200, { name: 'couchdb@127.0.0.1' }));
for (const prefix of ['/_node/:node/_config', '/_config']) {
  app.all(`${prefix}/:section?/:key?`, jsonBody, configRoute);
}

// ---------------------------------------------------------------- databases
app.put('/:db', (req, res, next) => {
  if (DB_NAME.test(req.params.db)) return next(); // express-pouchdb creates it (201/412)
  sendJSON(res, 400, {
    error: 'illegal_database_name',
    reason: `Name: '${req.params.db}'. Only lowercase characters (a-z), digits (0-9), and any of ` +
      'the characters _, $, (, ), +, -, and / are allowed. Must begin with a letter.',
  });
});

app.get('/:db', withDb, async (req, res) => {
  try {
    const info = await req.db.info();
    sendJSON(res, 200, {
      db_name: req.params.db, update_seq: encodeSeq(req.params.db, info.update_seq),
      purge_seq: encodeSeq(req.params.db, 0), doc_count: info.doc_count, doc_del_count: 0,
      sizes: { file: 0, external: 0, active: 0 }, instance_start_time: '0',
      compact_running: false, disk_format_version: 8, props: {}, cluster: { q: 1, n: 1, w: 1, r: 1 },
    });
  } catch (err) { sendPouchError(res, err); }
});

// Anything under a missing database: CouchDB's 404 rather than express-pouchdb's "no_db_file".
app.all('/:db/*', withDb, (req, res, next) => next());

// Views paged by `start_key_doc_id` (`startkey_docid`): PouchDB ignores it, CouchDB starts the
// rows of `start_key` at that doc id (https://docs.couchdb.org/en/stable/api/ddoc/views.html).
// Such a request is answered here: PouchDB's rows from `start_key`, those of `start_key` before
// the doc id dropped, then `limit` applied. Other view requests go on to express-pouchdb.
const { collate } = require('pouchdb-collate');
async function viewFromDocId(req, res, next) {
  const body = req.body && typeof req.body === 'object' && !Array.isArray(req.body) ? req.body : {};
  const param = (names) => {
    for (const name of names) {
      if (body[name] !== undefined) return body[name];
      if (req.query[name] !== undefined) {
        try { return JSON.parse(req.query[name]); } catch (err) { return req.query[name]; }
      }
    }
    return undefined;
  };
  const docId = param(['start_key_doc_id', 'startkey_docid']);
  const startKey = param(['start_key', 'startkey']);
  if (docId === undefined || startKey === undefined || param(['descending']) === true || param(['keys']) !== undefined) {
    return next();
  }
  const opts = { startkey: startKey };
  const endKey = param(['end_key', 'endkey']);
  if (endKey !== undefined) opts.endkey = endKey;
  for (const name of ['include_docs', 'reduce', 'inclusive_end', 'conflicts']) {
    if (param([name]) !== undefined) opts[name] = param([name]);
  }
  try {
    const result = await req.db.query(`${req.params.ddoc}/${req.params.view}`, opts);
    let rows = result.rows.filter((row) => collate(row.key, startKey) !== 0 || row.id >= String(docId));
    const limit = param(['limit']);
    if (limit !== undefined) rows = rows.slice(0, Number(limit));
    sendJSON(res, 200, { total_rows: result.total_rows, offset: 0, rows });
  } catch (err) { sendPouchError(res, err); }
}
app.get('/:db/_design/:ddoc/_view/:view', withDb, viewFromDocId);
app.post('/:db/_design/:ddoc/_view/:view', withDb, jsonBody, viewFromDocId);

// _security is kept, not enforced (only the admin can get in anyway).
const SECURITY_DOC = '_local/cht-test-server-security';
app.get('/:db/_security', withDb, (req, res) => req.db.get(SECURITY_DOC)
  .then((doc) => sendJSON(res, 200, doc.security), () => sendJSON(res, 200, {})));
app.put('/:db/_security', withDb, jsonBody, async (req, res) => {
  if (!req.body || typeof req.body !== 'object' || Array.isArray(req.body)) return badRequest(res, 'Security object must be a JSON object');
  try {
    const doc = await req.db.get(SECURITY_DOC).catch(() => ({ _id: SECURITY_DOC }));
    await req.db.put({ ...doc, security: req.body });
    sendJSON(res, 200, { ok: true });
  } catch (err) { sendPouchError(res, err); }
});

// DELETE of a document without a rev is a 409 on CouchDB (express-pouchdb deletes the latest).
app.delete('/:db/:id', (req, res, next) => {
  if (req.query.rev || req.headers['if-match'] || req.params.id.startsWith('_')) return next();
  sendJSON(res, 409, { error: 'conflict', reason: 'Document update conflict.' });
});

// ---------------------------------------------------------------- _changes
// One page of changes as CouchDB would answer it, seqs made opaque. `pending` is the number of
// changes after last_seq: 0 when the page was not full (PouchDB read to the end), else counted.
// Counting scans the rest of the feed, so past PENDING_EXACT_MAX it is estimated from update_seq
// instead (an upper bound that is 0 exactly when nothing is left), to keep paging linear.
const PENDING_EXACT_MAX = 1000;
async function changesPage(db, dbName, q, since, limit) {
  const page = await db.changes({ ...q.pouchOpts, since, limit, return_docs: true });
  const results = page.results.map((c) => {
    const row = { seq: encodeSeq(dbName, c.seq), id: c.id, changes: c.changes };
    if (c.deleted) row.deleted = true;
    if (c.doc) row.doc = c.doc;
    return row;
  });
  let pending = 0;
  if (!q.pouchOpts.descending && limit && results.length >= limit) {
    pending = (await db.info()).update_seq - page.last_seq;
    if (pending <= PENDING_EXACT_MAX) {
      let n = 0;
      await db.changes({ since: page.last_seq, return_docs: false }).on('change', () => { n++; });
      pending = n;
    }
  }
  return { results, lastSeq: page.last_seq, pending };
}

// Resolves true as soon as a change after `since` matching the filter exists, false on
// timeout (ms may be Infinity) or when the client went away.
function waitForChange(db, q, since, ms, abort) {
  return new Promise((resolve) => {
    let done = false, timer = null;
    const feed = db.changes({ ...q.pouchOpts, since, live: true, return_docs: false });
    const finish = (changed) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      abort.removeListener('abort', onAbort);
      feed.cancel();
      resolve(changed);
    };
    const onAbort = () => finish(false);
    feed.on('change', () => finish(true));
    feed.on('error', () => finish(true)); // the next page query reports the error
    abort.once('abort', onAbort);
    if (Number.isFinite(ms)) timer = setTimeout(() => finish(false), ms);
  });
}

// Parse and check the query; returns { error } or the options of the feed.
function parseChangesQuery(req) {
  const query = req.query, body = req.body && typeof req.body === 'object' ? req.body : {};
  const feed = query.feed || 'normal';
  if (!['normal', 'longpoll', 'continuous'].includes(feed)) return { error: `unsupported feed ${feed}` };
  const since = decodeSeq(query.since);
  if (since === null) return { error: "Malformed sequence supplied in 'since' parameter." };
  const limit = intParam(query.limit, undefined);
  if (Number.isNaN(limit)) return { error: 'limit must be a non-negative integer' };
  const maxTimeout = Number(config.chttpd.changes_timeout) || 60000;
  const timeout = intParam(query.timeout, maxTimeout);
  if (Number.isNaN(timeout)) return { error: 'timeout must be a non-negative integer' };
  let heartbeat = null;
  if (query.heartbeat !== undefined && query.heartbeat !== 'false') {
    heartbeat = isTrue(query.heartbeat) ? maxTimeout : intParam(query.heartbeat, maxTimeout);
    if (Number.isNaN(heartbeat)) return { error: 'heartbeat must be a non-negative integer' };
    heartbeat = Math.max(Math.min(heartbeat, maxTimeout), 10);
  }
  const pouchOpts = {
    include_docs: isTrue(query.include_docs), conflicts: isTrue(query.conflicts),
    descending: isTrue(query.descending) && feed === 'normal',
  };
  if (query.style === 'all_docs') pouchOpts.style = 'all_docs';
  const filter = query.filter;
  if (filter === '_doc_ids') {
    let ids = body.doc_ids;
    if (ids === undefined && query.doc_ids !== undefined) {
      try { ids = JSON.parse(query.doc_ids); } catch (e) { ids = null; }
    }
    if (!Array.isArray(ids) || !ids.every((id) => typeof id === 'string')) {
      return { error: '`doc_ids` filter parameter is not a list of doc ids.' };
    }
    pouchOpts.doc_ids = ids;
  } else if (filter === '_selector') {
    if (!body.selector || typeof body.selector !== 'object') return { error: 'Selector must be specified in POST payload' };
    pouchOpts.selector = body.selector;
  } else if (filter === '_design') {
    pouchOpts.filter = (doc) => doc._id.startsWith('_design/');
  } else if (filter !== undefined) {
    return { error: `filter ${filter} is not supported by this test server` };
  }
  // As in CouchDB: no heartbeat -> the feed ends after min(timeout, changes_timeout);
  // with a heartbeat the feed stays open until the client leaves.
  const waitMs = heartbeat ? Infinity : Math.min(timeout, maxTimeout);
  return { feed, since, limit: limit === 0 ? 1 : limit, heartbeat, waitMs, pouchOpts };
}

async function changes(req, res) {
  const dbName = req.params.db, db = req.db;
  const q = parseChangesQuery(req);
  if (q.error) return badRequest(res, q.error);
  const abort = new EventEmitter(); // 'abort' when the client goes away
  res.on('close', () => abort.emit('abort'));
  const gone = () => res.destroyed || res.writableEnded;
  let heartbeatTimer = null;
  try {
    let since = q.since === 'now' ? (await db.info()).update_seq : q.since;
    // A continuous feed is read in pages so a big backlog is streamed, not loaded at once.
    const firstLimit = q.feed === 'continuous' ? Math.min(q.limit || Infinity, 1000) : q.limit;
    let page = await changesPage(db, dbName, q, since, firstLimit);
    if (q.feed === 'normal') {
      return sendJSON(res, 200, { results: page.results, last_seq: encodeSeq(dbName, page.lastSeq), pending: page.pending });
    }
    // Streamed answers: headers now, rows as they come, never buffered or compressed.
    res.status(200).set({ 'Content-Type': 'application/json', 'Cache-Control': 'must-revalidate' });
    res.flushHeaders();
    if (q.heartbeat) heartbeatTimer = setInterval(() => res.write('\n'), q.heartbeat);
    if (q.feed === 'longpoll') {
      const deadline = Date.now() + q.waitMs;
      while (page.results.length === 0 && !gone()) {
        const left = deadline - Date.now();
        if (left <= 0 || !(await waitForChange(db, q, page.lastSeq, left, abort))) break;
        page = await changesPage(db, dbName, q, page.lastSeq, q.limit);
      }
      if (!gone()) {
        res.end(JSON.stringify({ results: page.results, last_seq: encodeSeq(dbName, page.lastSeq), pending: page.pending }) + '\n');
      }
      return;
    }
    // continuous: one JSON object per line, a final {"last_seq"} line when the feed ends.
    let remaining = q.limit || Infinity;
    for (;;) {
      for (const row of page.results) res.write(JSON.stringify(row) + '\n');
      remaining -= page.results.length;
      since = page.lastSeq;
      if (gone() || remaining <= 0) break;
      if (page.results.length === 0 && !(await waitForChange(db, q, since, q.waitMs, abort))) break;
      page = await changesPage(db, dbName, q, since, Math.min(remaining, 1000));
    }
    if (!gone()) res.end(JSON.stringify({ last_seq: encodeSeq(dbName, since), pending: page.pending }) + '\n');
  } catch (err) {
    if (!res.headersSent) sendPouchError(res, err);
    else res.end();
  } finally {
    clearInterval(heartbeatTimer);
  }
}
app.get('/:db/_changes', withDb, changes);
app.post('/:db/_changes', withDb, jsonBody, changes);

// ---------------------------------------------------------------- everything else
app.use(pouchApp);
app.use((err, req, res, next) => { // body-parser and route errors
  if (err.type === 'entity.parse.failed') return badRequest(res, 'invalid UTF-8 JSON');
  console.error('request error:', err);
  sendJSON(res, err.status || 500, { error: err.status ? 'bad_request' : 'unknown_error', reason: err.message });
});

// ---------------------------------------------------------------- start / stop
async function main() {
  await pouchApp.setPouchDB(PouchDB);
  const server = app.listen(args.port, args.host, () => {
    const { port } = server.address();
    process.stdout.write(JSON.stringify({ event: 'couchdb_test_server_ready', url: `http://${args.host}:${port}` }) + '\n');
  });
  server.on('error', (err) => { console.error(`cannot listen: ${err.message}`); process.exit(1); });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    server.close();
    server.closeAllConnections(); // ends open longpoll/continuous feeds
    const cache = PouchDB.__dbCacheMap;
    const dbs = cache ? Array.from(cache.values()) : [];
    await Promise.race([Promise.allSettled(dbs.map((db) => db.close())),
      new Promise((r) => setTimeout(r, 2000))]);
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (args.stopOnStdinClose) {
    // A launcher keeps our stdin open; when it dies without stopping us, the pipe closes and we
    // go too, instead of lingering as an orphan.
    process.stdin.on('end', stop).on('error', stop).resume();
  }
}
main().catch((err) => { console.error(err); process.exit(1); });
