// A charge point built on the npm package ocpp-rpc (an independent OCPP-J implementation), in
// strict mode: every CALL and CALLRESULT the central system sends is checked against the OCA
// OCPP 1.6 JSON schemas that ship with ocpp-rpc, and so is everything this peer sends.
//
// Usage: node ocpp_rpc_cp.mjs <endpoint> <identity> [session|datatransfer]
//   endpoint  the central system's OCPP URL without the id, e.g. ws://127.0.0.1:PORT/ocpp
//   identity  the charge point id (ocpp-rpc connects to `${endpoint}/${identity}`)
//   mode      session (default): boot, Heartbeat, StatusNotification Available, then answer one
//             RemoteStartTransaction and one RemoteStopTransaction with the charge point's side
//             of the story, and exit after the connector is Available again;
//             datatransfer: boot, send one DataTransfer with an unknown vendor, exit.
//
// It prints one JSON object per line on stdout ({"event": ...}) so a test can wait on lines.
// Every strict-mode failure, bad message, CALLERROR or failed call prints an event
// "failure" and makes the exit code 1. Exit codes: 0 all good, 1 failures, 2 usage,
// 3 the deadline passed, 4 the connection closed before the scenario finished.

import rpc from 'ocpp-rpc';

const { RPCClient } = rpc;

const [endpoint, identity, mode = 'session'] = process.argv.slice(2);
if (!endpoint || !identity || !['session', 'datatransfer'].includes(mode)) {
    process.stderr.write('usage: node ocpp_rpc_cp.mjs <endpoint> <identity> [session|datatransfer]\n');
    process.exit(2);
}

const DEADLINE_MS = Number(process.env.PEER_DEADLINE_MS || 60000);
const failures = [];
let finished = false;

function emit(event, fields = {}) {
    process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

function fail(kind, detail) {
    failures.push({ kind, detail });
    emit('failure', { kind, detail });
}

function describe(error) {
    if (!error) return String(error);
    const text = { name: error.name, message: error.message };
    if (error.rpcErrorCode) text.rpcErrorCode = error.rpcErrorCode;
    if (error.details && Object.keys(error.details).length) text.details = error.details;
    return text;
}

const client = new RPCClient({
    endpoint,
    identity,
    protocols: ['ocpp1.6'],
    strictMode: true,
    reconnect: false,
    callTimeoutMs: 15000,
    pingIntervalMs: 0,
});

client.on('strictValidationFailure', (event) => {
    fail('strictValidationFailure', {
        method: event.method,
        outbound: event.outbound,
        isCall: event.isCall,
        params: event.params,
        result: event.result,
        error: describe(event.error),
    });
});
client.on('badMessage', (event) => {
    fail('badMessage', { message: String(event.buffer), error: describe(event.error) });
});
client.on('callError', (event) => {
    fail('callError', { method: event.method, outbound: event.outbound, error: describe(event.error) });
});
client.on('socketError', (error) => fail('socketError', describe(error)));
client.on('close', ({ code, reason }) => {
    emit('closed', { code, reason: String(reason) });
    if (!finished) {
        fail('closed', { code, reason: String(reason) });
        finish(4);
    }
});

const deadline = setTimeout(() => {
    fail('deadline', { ms: DEADLINE_MS });
    finish(3);
}, DEADLINE_MS);

function finish(code) {
    if (finished) return;
    finished = true;
    clearTimeout(deadline);
    const exitCode = code !== 0 ? code : failures.length ? 1 : 0;
    emit('exit', { code: exitCode, failures: failures.length });
    client.close({ code: 1000, reason: 'peer done' }).finally(() => process.exit(exitCode));
}

const now = () => new Date().toISOString();

// A CALL whose rejection is a failure of the scenario: ocpp-rpc emits 'callError' for every
// rejected call (CALLERROR, strict-mode failure of the answer, timeout) and
// 'strictValidationFailure' for params of ours that fail the schema; both are recorded above.
const call = (method, params) => client.call(method, params);

async function status(connectorId, value) {
    await call('StatusNotification', {
        connectorId,
        errorCode: 'NoError',
        status: value,
        timestamp: now(),
    });
    emit('status', { connectorId, status: value });
}

// Runs a sequence after the CALLRESULT to the central system's CALL has gone out: ocpp-rpc
// sends the reply in the microtasks that follow the handler's return, setImmediate runs after.
function afterReply(name, sequence) {
    setImmediate(() => {
        sequence().catch((error) => {
            fail('sequence', { name, error: describe(error) });
            finish(1);
        });
    });
}

const connector = { id: 1, transactionId: null, idTag: null, energyWh: 15000 };

client.handle('RemoteStartTransaction', ({ params }) => {
    emit('remote_start', { params });
    const connectorId = params.connectorId ?? 1;
    if (connectorId !== connector.id || connector.transactionId !== null) {
        return { status: 'Rejected' };
    }
    afterReply('start', async () => {
        connector.idTag = params.idTag;
        await status(connectorId, 'Preparing');
        const started = await call('StartTransaction', {
            connectorId,
            idTag: params.idTag,
            meterStart: connector.energyWh,
            timestamp: now(),
        });
        connector.transactionId = started.transactionId;
        emit('started', { transactionId: started.transactionId, idTagInfo: started.idTagInfo });
        await status(connectorId, 'Charging');
        connector.energyWh = 15234;
        await call('MeterValues', {
            connectorId,
            transactionId: connector.transactionId,
            meterValue: [{
                timestamp: now(),
                sampledValue: [
                    {
                        value: String(connector.energyWh),
                        context: 'Sample.Periodic',
                        measurand: 'Energy.Active.Import.Register',
                        location: 'Outlet',
                        unit: 'Wh',
                    },
                    {
                        value: '7400',
                        context: 'Sample.Periodic',
                        measurand: 'Power.Active.Import',
                        location: 'Outlet',
                        unit: 'W',
                    },
                ],
            }],
        });
        emit('meter_sent', { transactionId: connector.transactionId, energyWh: connector.energyWh });
    });
    return { status: 'Accepted' };
});

client.handle('RemoteStopTransaction', ({ params }) => {
    emit('remote_stop', { params });
    if (connector.transactionId === null || params.transactionId !== connector.transactionId) {
        return { status: 'Rejected' };
    }
    afterReply('stop', async () => {
        const transactionId = connector.transactionId;
        await status(connector.id, 'Finishing');
        connector.energyWh = 22000;
        const stopped = await call('StopTransaction', {
            transactionId,
            meterStop: connector.energyWh,
            timestamp: now(),
            reason: 'Remote',
            idTag: connector.idTag,
        });
        connector.transactionId = null;
        emit('stopped', { transactionId, idTagInfo: stopped.idTagInfo ?? null });
        await status(connector.id, 'Available');
        emit('finished', { transactionId });
        finish(0);
    });
    return { status: 'Accepted' };
});

// Anything else the central system asks is answered NotImplemented by ocpp-rpc (no wildcard
// handler); it would also show up as a callError failure, which is what a test wants to see.

async function main() {
    await client.connect();
    emit('open', { protocol: client.protocol });
    const boot = await call('BootNotification', {
        chargePointVendor: 'ocpp-rpc-peer',
        chargePointModel: 'strict',
        firmwareVersion: '2.2.1',
    });
    emit('boot', { result: boot });
    if (boot.status !== 'Accepted') {
        fail('boot', { result: boot });
        finish(1);
        return;
    }
    const beat = await call('Heartbeat', {});
    emit('heartbeat', { result: beat });
    if (mode === 'datatransfer') {
        const result = await call('DataTransfer', {
            vendorId: 'com.example.nobody-knows-this-vendor',
            messageId: 'Ping',
            data: '{"hello":"world"}',
        });
        emit('data_transfer', { result });
        finish(0);
        return;
    }
    await status(connector.id, 'Available');
    emit('booted', { identity: client.identity });
}

main().catch((error) => {
    fail('main', describe(error));
    finish(1);
});
