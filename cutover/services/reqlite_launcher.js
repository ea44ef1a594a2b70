// Start reqlite (a RethinkDB-compatible server in JavaScript) on 127.0.0.1 only.
//
// Why a launcher: reqlite calls server.listen(port) with no host, i.e. on all
// addresses. Wrapping net.Server.prototype.listen before loading it forces the
// loopback host without patching the package.
//
// usage: node reqlite_launcher.js <node_modules dir> <port>
'use strict';
const net = require('net');
const path = require('path');

const [modules, portArg] = process.argv.slice(2);
const port = Number.parseInt(portArg, 10);
if (!modules || !Number.isInteger(port) || port <= 0) {
  console.error('usage: node reqlite_launcher.js <node_modules dir> <port>');
  process.exit(2);
}
const HOST = '127.0.0.1';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || typeof args[0] === 'string') {
    const callback = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
    const options = { port: Number(args[0]), host: HOST };
    return callback ? listen.call(this, options, callback) : listen.call(this, options);
  }
  if (args[0] && typeof args[0] === 'object' && !Array.isArray(args[0])) {
    args[0] = Object.assign({}, args[0], { host: HOST });
  }
  return listen.apply(this, args);
};

const Server = require(path.join(modules, 'reqlite', 'lib', 'index.js'));
const server = new Server({ 'driver-port': port, silent: true });
server._server.on('error', (err) => {
  console.error(`reqlite: cannot listen on ${HOST}:${port}: ${err.code || err.message}`);
  process.exit(1);
});
server._server.on('listening', () => {
  console.error(`reqlite: ready on ${HOST}:${port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
