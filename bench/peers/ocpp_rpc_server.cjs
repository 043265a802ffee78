'use strict';
/*
 * Another runtime: a minimal `ocpp-rpc` central system (Node.js, strictMode on: every call and
 * response validated against the OCPP 1.6 schemas) that only replies. No storage, no fan-out.
 *
 *   node bench/peers/ocpp_rpc_server.cjs PORT
 */
const { RPCServer } = require('ocpp-rpc');

async function main() {
  const port = Number(process.argv[2]);
  const server = new RPCServer({ protocols: ['ocpp1.6'], strictMode: true });
  const now = () => new Date().toISOString();
  server.on('client', (client) => {
    client.handle('BootNotification', () => ({ status: 'Accepted', interval: 300, currentTime: now() }));
    client.handle('Heartbeat', () => ({ currentTime: now() }));
    client.handle('StatusNotification', () => ({}));
    client.handle('Authorize', () => ({ idTagInfo: { status: 'Accepted' } }));
    client.handle('StartTransaction', () => ({ transactionId: 1, idTagInfo: { status: 'Accepted' } }));
    client.handle('StopTransaction', () => ({}));
    client.handle('MeterValues', () => ({}));
  });
  await server.listen(port, '127.0.0.1');
  process.on('SIGTERM', () => process.exit(0));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
