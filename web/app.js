// balancehub API tester: connects with the @microsoft/signalr browser client (any transport, JSON
// or MessagePack), invokes GetBalances and shows the balances, live updates and the raw events.
// The API key lives only in the input field and in the connection's token factory: it is never
// written to storage, cookies or the URL.
'use strict';

(function () {
  const HUB_PATH = '/ExecutionLiveServer/v1';
  const LOG_MAX = 100;
  const CLIENT_ID_MAX = 36;
  const COLUMNS = [
    ['available', 'Available'],
    ['allocated', 'Allocated'],
    ['currentExposure', 'Current exposure'],
    ['maxExposure', 'Max exposure'],
  ];

  const $ = (id) => document.getElementById(id);
  const els = {
    state: $('state'),
    stateText: $('state-text'),
    key: $('api-key'),
    toggleKey: $('toggle-key'),
    hubUrl: $('hub-url'),
    hubPath: $('hub-path'),
    transport: $('transport'),
    protocol: $('protocol'),
    connect: $('connect'),
    disconnect: $('disconnect'),
    connInfo: $('conn-info'),
    error: $('error'),
    errorTitle: $('error-title'),
    errorDetail: $('error-detail'),
    clientId: $('client-id'),
    clientIdCount: $('client-id-count'),
    snippet: $('snippet'),
    invoke: $('invoke'),
    commandStatus: $('command-status'),
    live: $('live'),
    userId: $('user-id'),
    baseCurrency: $('base-currency'),
    sequence: $('sequence'),
    updated: $('updated'),
    balancesAlert: $('balances-alert'),
    balancesBody: $('balances-body'),
    totalCurrent: $('total-current'),
    totalMax: $('total-max'),
    exposureText: $('exposure-text'),
    exposureBar: $('exposure-bar'),
    log: $('log'),
    logEmpty: $('log-empty'),
    logCount: $('log-count'),
    clearLog: $('clear-log'),
  };

  let conn = null; // the current HubConnection
  let state = 'Disconnected';
  let userStopped = false;
  let transportUsed = '';
  let subscribedClientId = null; // the ClientId of the last successful GetBalances
  let lastSequence = null;
  let prevCells = new Map(); // "ASSET/field" -> text, to flash what changed
  let pendingPrecheck = null; // preChecksError received while an invocation is running
  let logTotal = 0;

  // ---------------------------------------------------------------------------------------------
  // formatting

  // A JSON number as plain decimal text: no exponent (1e-18 -> 0.000000000000000001), integer
  // digits grouped. Strings (amounts-as-strings) and BigInts are shown as they are.
  function plainDecimal(v) {
    if (typeof v === 'bigint') return v.toString();
    if (typeof v === 'string') return v;
    if (typeof v !== 'number' || !Number.isFinite(v)) return String(v);
    let s = String(v);
    const m = /^(-?)(\d+)(?:\.(\d+))?e([+-]\d+)$/i.exec(s);
    if (m) {
      const sign = m[1];
      let digits = m[2] + (m[3] || '');
      let point = m[2].length + Number(m[4]);
      if (point <= 0) {
        digits = '0'.repeat(1 - point) + digits;
        point = 1;
      } else if (point > digits.length) {
        digits += '0'.repeat(point - digits.length);
      }
      const int = digits.slice(0, point).replace(/^0+(?=\d)/, '');
      const frac = digits.slice(point).replace(/0+$/, '');
      s = sign + int + (frac ? '.' + frac : '');
    }
    return s;
  }

  function formatAmount(v) {
    if (v === undefined || v === null) return '–';
    const s = plainDecimal(v);
    const m = /^(-?)(\d+)(\.\d+)?$/.exec(s);
    if (!m) return s;
    return m[1] + m[2].replace(/\B(?=(\d{3})+(?!\d))/g, ',') + (m[3] || '');
  }

  function isZero(v) {
    return v === 0 || v === '0' || (typeof v === 'bigint' && v === 0n);
  }

  function clock(d = new Date()) {
    const p = (n, w = 2) => String(n).padStart(w, '0');
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }

  // JSON.stringify that survives BigInt (MessagePack int64) values.
  function pretty(obj) {
    return JSON.stringify(obj, (k, v) => (typeof v === 'bigint' ? v.toString() : v), 2);
  }

  // ---------------------------------------------------------------------------------------------
  // connection state and errors

  function setState(s) {
    state = s;
    els.stateText.textContent = s;
    els.state.dataset.state = s.toLowerCase();
    const idle = s === 'Disconnected';
    els.connect.disabled = !idle;
    els.disconnect.disabled = idle;
    els.invoke.disabled = s !== 'Connected';
    for (const el of [els.key, els.hubUrl, els.transport, els.protocol]) el.disabled = !idle;
    els.live.hidden = !(s === 'Connected' && subscribedClientId !== null);
  }

  function showError(title, detail) {
    els.errorTitle.textContent = title;
    els.errorDetail.textContent = detail || '';
    els.errorDetail.hidden = !detail;
    els.error.hidden = false;
  }

  function clearError() {
    els.error.hidden = true;
    els.errorTitle.textContent = '';
    els.errorDetail.textContent = '';
  }

  function statusCodeOf(err) {
    if (err && typeof err.statusCode === 'number') return err.statusCode;
    const m = /Status code '(\d{3})'/.exec(String((err && err.message) || err));
    return m ? Number(m[1]) : null;
  }

  // A start() failure in words a person can act on; the client's own message goes below it.
  function describeStartError(err, url) {
    const msg = String((err && err.message) || err);
    const code = statusCodeOf(err);
    if (code === 401) return ['The API key was refused (401).', 'Check that the whole key was pasted and that it has not been revoked.'];
    if (code === 403) return ['Access denied (403).', msg];
    if (code === 404) return [`No SignalR hub at ${url.pathname} (404).`, `Check the hub URL; balancehub serves it at ${HUB_PATH} by default.`];
    if (code === 429) return ['Too many connections or requests for this key (429).', 'Close other connections or wait a moment.'];
    if (code !== null) return [`The server refused the connection (${code}).`, msg];
    if (/Failed to fetch|NetworkError|ERR_CONNECTION|WebSocket failed to connect|Failed to connect/i.test(msg)) {
      return [`Could not reach the hub at ${url.host}.`, msg];
    }
    if (/does not support|available transports|not supported/i.test(msg)) {
      return ['The selected transport or protocol is not available.', msg];
    }
    return ['Could not connect.', msg];
  }

  // Receives the client's log lines: notes which transport it picked, keeps warnings visible in
  // the console. Debug lines are needed for "Selecting transport"; the rest is dropped.
  const clientLogger = {
    log(level, message) {
      const m = /Selecting transport '(\w+)'/.exec(message);
      if (m) transportUsed = m[1];
      if (level >= signalR.LogLevel.Error) console.error('[signalr]', message);
      else if (level === signalR.LogLevel.Warning) console.warn('[signalr]', message);
    },
  };

  function transportLabel(name) {
    return { WebSockets: 'WebSockets', ServerSentEvents: 'Server-Sent Events', LongPolling: 'Long Polling' }[name] || name || 'unknown transport';
  }

  async function connect() {
    clearError();
    if (typeof signalR === 'undefined') {
      showError('The SignalR client did not load.', 'signalr.min.js is served by balancehub itself; reload the page.');
      return;
    }
    const key = els.key.value.trim();
    if (!key) {
      showError('Paste an API key first.', 'balancehub serve --demo prints one (and saves it in DATA/demo-api-key).');
      els.key.focus();
      return;
    }
    let url;
    try {
      url = new URL(els.hubUrl.value.trim(), location.href);
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('scheme');
    } catch {
      showError('The hub URL is not valid.', 'Use an http:// or https:// URL, e.g. ' + location.origin + HUB_PATH);
      return;
    }
    const transportName = els.transport.value;
    const protocol = els.protocol.value;
    if (protocol === 'messagepack' && transportName === 'ServerSentEvents') {
      showError('Server-Sent Events carry text only.', 'MessagePack is binary: choose JSON, or WebSockets / Long Polling.');
      return;
    }
    const options = { accessTokenFactory: () => key };
    if (transportName !== 'auto') options.transport = signalR.HttpTransportType[transportName];
    const builder = new signalR.HubConnectionBuilder()
      .withUrl(url.href, options)
      .withAutomaticReconnect()
      .configureLogging(clientLogger);
    if (protocol === 'messagepack') {
      if (!signalR.protocols || !signalR.protocols.msgpack) {
        showError('The MessagePack protocol did not load.', 'signalr-protocol-msgpack.min.js is served by balancehub itself; reload the page.');
        return;
      }
      builder.withHubProtocol(new signalR.protocols.msgpack.MessagePackHubProtocol());
    }
    const c = builder.build();
    c.on('executionEvents', onEvent);
    c.onreconnecting((err) => {
      if (c !== conn) return;
      setState('Reconnecting');
      logSystem('Connection lost; reconnecting…' + (err ? ` (${err.message})` : ''), true);
    });
    c.onreconnected(() => {
      if (c !== conn) return;
      setState('Connected');
      logSystem(`Reconnected via ${transportLabel(transportUsed)}.`);
      // Live updates belong to a connection: subscribe the new one where the old one was.
      if (subscribedClientId !== null) invokeGetBalances(subscribedClientId, true);
    });
    c.onclose((err) => {
      if (c !== conn) return;
      conn = null;
      subscribedClientId = null;
      setState('Disconnected');
      els.connInfo.textContent = 'Not connected.';
      if (err && !userStopped) {
        showError('The connection was closed by the server.', err.message);
        logSystem('Connection closed: ' + err.message, true);
      } else {
        logSystem('Disconnected.');
      }
    });

    conn = c;
    userStopped = false;
    transportUsed = transportName === 'auto' ? '' : transportName;
    subscribedClientId = null;
    lastSequence = null;
    setState('Connecting');
    els.connInfo.textContent = `Connecting to ${url.host}…`;
    try {
      await c.start();
    } catch (err) {
      if (c !== conn) return;
      conn = null;
      setState('Disconnected');
      els.connInfo.textContent = 'Not connected.';
      if (userStopped) {
        logSystem('Connection attempt cancelled.');
        return;
      }
      const [title, detail] = describeStartError(err, url);
      showError(title, detail);
      logSystem(title, true);
      return;
    }
    if (c !== conn) return;
    setState('Connected');
    const info = `Connected via ${transportLabel(transportUsed)} · ${protocol === 'json' ? 'JSON' : 'MessagePack'}`;
    els.connInfo.textContent = info;
    els.connInfo.title = c.connectionId ? `connection id ${c.connectionId}` : '';
    logSystem(info + '.');
  }

  async function disconnect() {
    const c = conn;
    if (!c) return;
    userStopped = true;
    try {
      await c.stop();
    } catch {
      // stop() rejects only when start() is still pending; onclose runs regardless.
    }
  }

  // ---------------------------------------------------------------------------------------------
  // GetBalances

  function setCommandStatus(kind, text) {
    els.commandStatus.className = 'status' + (kind ? ' ' + kind : '');
    els.commandStatus.textContent = text;
    els.commandStatus.hidden = !text;
  }

  async function invokeGetBalances(clientId, quiet) {
    const c = conn;
    if (!c || state !== 'Connected') return;
    pendingPrecheck = null;
    if (!quiet) setCommandStatus('', 'Invoking GetBalances…');
    const t0 = performance.now();
    try {
      await c.invoke('GetBalances', clientId);
    } catch (err) {
      setCommandStatus('error', 'GetBalances failed: ' + err.message);
      return;
    }
    const ms = Math.round(performance.now() - t0);
    if (pendingPrecheck !== null) {
      setCommandStatus('error', 'preChecksError: ' + pendingPrecheck);
    } else {
      subscribedClientId = clientId;
      setState(state); // shows the "Live" marker
      if (!quiet) setCommandStatus('ok', `GetBalances completed in ${ms} ms · live updates on for “${clientId}”`);
    }
    pendingPrecheck = null;
  }

  function onClientIdInput() {
    const v = els.clientId.value;
    const n = [...v].length;
    els.clientIdCount.textContent = `${n}/${CLIENT_ID_MAX}`;
    els.clientIdCount.classList.toggle('full', n >= CLIENT_ID_MAX);
    // As the seed writes it, the argument aligned under the method so it fits the card.
    const arg = "'" + JSON.stringify(v).slice(1, -1).replace(/'/g, "\\'") + "'";
    els.snippet.textContent = `connection.invoke('GetBalances',\n                  ${arg})`;
  }

  // ---------------------------------------------------------------------------------------------
  // events

  function onEvent(env) {
    logEvent(env);
    if (!env || typeof env !== 'object') return;
    const subject = env.subject;
    const data = env.data || {};
    if (subject === 'account.balances.snapshot' || subject === 'account.balances.update') {
      const seq = typeof data.sequence === 'bigint' ? Number(data.sequence) : data.sequence;
      const isUpdate = subject === 'account.balances.update';
      if (isUpdate && lastSequence !== null && typeof seq === 'number') {
        if (seq <= lastSequence) return; // older than what is shown
        if (seq !== lastSequence + 1 && subscribedClientId !== null) {
          logSystem(`Sequence gap (had ${lastSequence}, got ${seq}): fetching a fresh snapshot.`, true);
          invokeGetBalances(subscribedClientId, true);
        }
      }
      if (typeof seq === 'number') lastSequence = seq;
      renderBalances(data, isUpdate ? 'update' : 'snapshot');
    } else if (subject === 'preChecksError') {
      pendingPrecheck = data.message || 'the arguments were rejected';
      setCommandStatus('error', 'preChecksError: ' + pendingPrecheck);
    } else if (typeof subject === 'string' && /error$/i.test(subject)) {
      els.balancesAlert.textContent = `${subject}: ${data.message || 'error'}`;
      els.balancesAlert.hidden = false;
    }
  }

  function cell(tag, text, cls) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (cls) el.className = cls;
    return el;
  }

  function renderBalances(data, kind) {
    const ccy = typeof data.baseCurrency === 'string' ? data.baseCurrency : '';
    els.userId.textContent = data.userId ?? '–';
    els.userId.title = data.userId ?? '';
    els.baseCurrency.textContent = ccy || '–';
    els.sequence.textContent = data.sequence !== undefined ? plainDecimal(data.sequence) : '–';
    els.updated.textContent = `${clock().slice(0, 8)} · ${kind}`;
    for (const el of document.querySelectorAll('.balances .ccy')) el.textContent = ccy ? `(${ccy})` : '';

    if (data.deleted === true) {
      els.balancesAlert.textContent = 'This user has been deleted: the server closes the connection.';
      els.balancesAlert.hidden = false;
    } else {
      els.balancesAlert.hidden = true;
    }

    const assets = Array.isArray(data.assets) ? data.assets : [];
    const next = new Map();
    const rows = [];
    for (const a of assets) {
      const name = String(a && a.name);
      const tr = document.createElement('tr');
      tr.dataset.asset = name;
      tr.appendChild(cell('th', name)).scope = 'row';
      for (const [field, label] of COLUMNS) {
        const text = formatAmount(a[field]);
        const td = cell('td', text, 'num' + (isZero(a[field]) ? ' zero' : ''));
        td.dataset.field = field;
        td.dataset.label = label; // the column name, shown beside the value on narrow screens
        const k = name + '/' + field;
        if (kind === 'update' && prevCells.has(k) && prevCells.get(k) !== text) td.classList.add('changed');
        next.set(k, text);
        tr.appendChild(td);
      }
      rows.push(tr);
    }
    if (rows.length === 0) {
      const tr = document.createElement('tr');
      tr.className = 'empty';
      const td = cell('td', 'This user holds no assets yet.');
      td.colSpan = 5;
      tr.appendChild(td);
      rows.push(tr);
    }
    els.balancesBody.replaceChildren(...rows);
    prevCells = next;

    els.totalCurrent.textContent = formatAmount(data.totalCurrentExposure);
    els.totalMax.textContent = formatAmount(data.totalMaxExposure);
    const cur = Number(data.totalCurrentExposure);
    const max = Number(data.totalMaxExposure);
    if (Number.isFinite(cur) && Number.isFinite(max) && max > 0) {
      const pct = Math.min(100, Math.max(0, (cur / max) * 100));
      els.exposureText.textContent = `${formatAmount(data.totalCurrentExposure)} of ${formatAmount(data.totalMaxExposure)} ${ccy} (${pct.toFixed(pct > 0 && pct < 1 ? 2 : 0)}%)`;
      els.exposureBar.style.width = pct + '%';
      els.exposureBar.classList.toggle('high', pct >= 80);
    } else {
      els.exposureText.textContent = '–';
      els.exposureBar.style.width = '0';
    }
  }

  // ---------------------------------------------------------------------------------------------
  // event log (newest first, bounded)

  function addEntry(li) {
    els.log.prepend(li);
    while (els.log.children.length > LOG_MAX) els.log.lastElementChild.remove();
    logTotal++;
    els.logCount.textContent = String(logTotal);
    els.logEmpty.hidden = true;
  }

  function logEvent(env) {
    const li = document.createElement('li');
    li.className = 'entry event';
    const head = document.createElement('div');
    head.className = 'entry-head';
    head.appendChild(cell('time', clock()));
    const subject = env && typeof env.subject === 'string' ? env.subject : '(no subject)';
    let cls = '';
    if (/snapshot$/.test(subject)) cls = 'snapshot';
    else if (/update$/.test(subject)) cls = 'update';
    else if (/error$/i.test(subject)) cls = 'error';
    head.appendChild(cell('span', subject, 'badge ' + cls));
    if (env && env.data && env.data.sequence !== undefined) head.appendChild(cell('span', 'seq ' + plainDecimal(env.data.sequence), 'note'));
    if (env && typeof env.clientId === 'string') head.appendChild(cell('span', env.clientId, 'note'));
    li.appendChild(head);
    li.appendChild(cell('pre', pretty(env)));
    addEntry(li);
  }

  function logSystem(text, bad) {
    const li = document.createElement('li');
    li.className = 'entry system' + (bad ? ' bad' : '');
    const head = document.createElement('div');
    head.className = 'entry-head';
    head.appendChild(cell('time', clock()));
    head.appendChild(cell('span', text, 'note'));
    li.appendChild(head);
    addEntry(li);
  }

  // ---------------------------------------------------------------------------------------------
  // wiring

  els.hubUrl.value = location.origin + HUB_PATH;
  els.hubUrl.addEventListener('input', () => {
    try {
      els.hubPath.textContent = new URL(els.hubUrl.value, location.href).pathname;
    } catch {
      // keep the last valid path while the URL is being edited
    }
  });
  els.connect.addEventListener('click', connect);
  els.disconnect.addEventListener('click', disconnect);
  els.invoke.addEventListener('click', () => invokeGetBalances(els.clientId.value, false));
  els.key.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !els.connect.disabled) connect();
  });
  els.hubUrl.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !els.connect.disabled) connect();
  });
  els.clientId.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !els.invoke.disabled) invokeGetBalances(els.clientId.value, false);
  });
  els.clientId.addEventListener('input', onClientIdInput);
  els.balancesBody.addEventListener('animationend', (e) => e.target.classList.remove('changed'));
  els.toggleKey.addEventListener('click', () => {
    const show = els.key.type === 'password';
    els.key.type = show ? 'text' : 'password';
    els.toggleKey.textContent = show ? 'Hide' : 'Show';
    els.toggleKey.setAttribute('aria-pressed', String(show));
  });
  els.clearLog.addEventListener('click', () => {
    els.log.replaceChildren();
    logTotal = 0;
    els.logCount.textContent = '0';
    els.logEmpty.hidden = false;
  });
  window.addEventListener('pagehide', () => {
    // Leave nothing behind: drop the key from the field (no form restore) and close the hub.
    els.key.value = '';
    if (conn) conn.stop().catch(() => {});
  });
  onClientIdInput();
  setState('Disconnected');
})();
