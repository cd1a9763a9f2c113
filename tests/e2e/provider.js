// The OpenID provider of scopegate's end-to-end suite: panva's certified
// `oidc-provider`, configured to issue what a Matrix deployment's provider
// issues, plus the adapters current Synapse needs to accept its tokens.
//
//   opaque access tokens  resource urn:scopegate:homeserver (the default), RFC 7662 introspection
//   JWT access tokens     resource urn:scopegate:gateway, RFC 9068 (typ at+jwt), keys at /jwks
//                         (urn:scopegate:elsewhere: the same, for an audience scopegate must refuse)
//   grants                client_credentials, authorization_code + PKCE, refresh_token
//                         (rotated on every use), device_code (RFC 8628)
//   scopes                urn:matrix:client:api:*, urn:matrix:client:device:<id> (dynamic),
//                         the unstable MSC2967 forms, urn:synapse:admin:*, widget capabilities
//                         (org.matrix.msc2762.*), the bot vocabulary (scopegate:read,
//                         scopegate:messaging, scopegate:media)
//
// Every access token carries `username` (the Matrix localpart): the account id
// for interactive logins (devInteractions: any login, any password), or the
// client's `matrix_user` for client_credentials.
//
// Test hooks (not part of any protocol):
//   GET /_e2e/stats   {"introspection": {"<client>": n, ...}, "token": n, "revocation": n}
// and one log line per introspection call: `introspection client=<id> n=<count>`.
//
// Env: OP_PORT, OP_STATE_DIR (JWKS persisted there), OP_AT_TTL (s, default 600),
// OP_JWT_ALG (RS256|ES256), OP_MAS_SECRET (the secret shared with the delegated
// Synapses), OP_SYNAPSE_URL (space-separated: provision users and devices in each),
// OP_GATEWAY_SECRET.

import fs from 'node:fs';
import path from 'node:path';
import { Buffer } from 'node:buffer';

import Provider, { errors } from 'oidc-provider';
import * as jose from 'jose';

const HOST = '127.0.0.1';
const PORT = Number(process.env.OP_PORT || 18080);
const ISSUER = `http://${HOST}:${PORT}`;
const STATE_DIR = process.env.OP_STATE_DIR || '.';
const AT_TTL = Number(process.env.OP_AT_TTL || 600);
const JWT_ALG = process.env.OP_JWT_ALG || 'RS256';
const MAS_SECRET = process.env.OP_MAS_SECRET || 'e2e-mas-shared-secret';
const GATEWAY_SECRET = process.env.OP_GATEWAY_SECRET || 'gateway-secret';
const SYNAPSE_URLS = (process.env.OP_SYNAPSE_URL || '').split(/[\s,]+/).filter(Boolean);

export const RS_HOMESERVER = 'urn:scopegate:homeserver'; // opaque tokens
export const RS_GATEWAY = 'urn:scopegate:gateway'; // RFC 9068 JWTs
export const RS_ELSEWHERE = 'urn:scopegate:elsewhere'; // JWTs for another audience

// What a resource server grants: anything in these namespaces, as requested.
const GRANTABLE = /^(urn:(matrix|synapse|scopegate):\S+|org\.matrix\.msc2762\.\S+|scopegate:(read|messaging|media))$/;
const DEVICE_SCOPE = /^urn:matrix:(client|org\.matrix\.msc2967\.client):device:(\S+)$/;

// ---------------------------------------------------------------- keys

async function loadKeys() {
  const file = path.join(STATE_DIR, 'op-jwks.json');
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    const keys = [];
    for (const alg of ['RS256', 'ES256']) {
      const { privateKey } = await jose.generateKeyPair(alg, { extractable: true });
      const jwk = await jose.exportJWK(privateKey);
      jwk.alg = alg;
      jwk.use = 'sig';
      jwk.kid = await jose.calculateJwkThumbprint(jwk);
      keys.push(jwk);
    }
    const jwks = { keys };
    fs.mkdirSync(STATE_DIR, { recursive: true });
    fs.writeFileSync(file, JSON.stringify(jwks), { mode: 0o600 });
    return jwks;
  }
}

const jwks = await loadKeys();
// Public halves, for verifying our own JWTs when Synapse asks (adapter 6 below).
const publicJwks = {
  keys: jwks.keys.map(({ d, p, q, dp, dq, qi, ...pub }) => pub),
};
const localKeySet = jose.createLocalJWKSet(publicJwks);

// ---------------------------------------------------------------- clients

const ccClient = (user, id = `${user}-cc`, extra = {}) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  token_endpoint_auth_method: 'client_secret_post',
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  matrix_user: user,
  ...extra,
});

const clients = [
  // The delegated Synapse introspects as this client (shared secret, adapter 2).
  {
    client_id: 'synapse',
    client_secret: MAS_SECRET,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
  // scopegate introspects as one of these, per [auth.introspection] auth_method.
  {
    client_id: 'gateway',
    client_secret: GATEWAY_SECRET,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
  {
    client_id: 'gateway-post',
    client_secret: GATEWAY_SECRET,
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
  ...['alice', 'bob', 'admin', 'carol', 'readbot', 'widget'].map((u) => ccClient(u)),
  // Short-lived access tokens (4 s), for expiry tests.
  ccClient('alice', 'alice-short-cc', { access_token_ttl: 4 }),
  // A Matrix client app: public, PKCE, refresh tokens, device grant.
  {
    client_id: 'matrix-client',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1:8765/callback'],
  },
];

const INTROSPECTORS = new Set(['synapse', 'gateway', 'gateway-post']);
// Adapter 2: `Authorization: Bearer <secret>` (how Synapse, and scopegate's
// "bearer" auth_method, authenticate) → client_secret_basic for that client.
const BEARER_CLIENTS = new Map([
  [MAS_SECRET, ['synapse', MAS_SECRET]],
  [GATEWAY_SECRET, ['gateway', GATEWAY_SECRET]],
]);

// ---------------------------------------------------------------- Synapse provisioning

// MAS provisions users and devices in Synapse before a token for them is used
// (adapter 4): Synapse answers 500 "User not found" otherwise. Every Synapse
// that takes this provider's tokens (directly, or through scopegate's relay)
// gets them.
const provisioned = new Set();
async function masCall(base, endpoint, body) {
  const res = await fetch(`${base}/_synapse/mas/${endpoint}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${MAS_SECRET}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  if (!res.ok) throw new Error(`${endpoint}: HTTP ${res.status} ${await res.text()}`);
}

async function provisionIn(base, localpart, devices) {
  const user = `${base} u:${localpart}`;
  try {
    if (!provisioned.has(user)) {
      await masCall(base, 'provision_user', { localpart });
      provisioned.add(user);
    }
    for (const device of devices) {
      const key = `${base} d:${localpart}:${device}`;
      if (!provisioned.has(key)) {
        await masCall(base, 'upsert_device', { localpart, device_id: device });
        provisioned.add(key);
      }
    }
  } catch (e) {
    console.error(`provisioning ${localpart} in ${base} failed: ${e.message}`);
  }
}

async function provision(localpart, scopes) {
  if (!localpart) return;
  const devices = scopes.map((s) => DEVICE_SCOPE.exec(s)?.[2]).filter(Boolean);
  await Promise.all(SYNAPSE_URLS.map((base) => provisionIn(base, localpart, devices)));
}

// ---------------------------------------------------------------- resource servers

function splitScope(s) {
  return typeof s === 'string' ? s.split(' ').filter(Boolean) : [];
}

// A resource server's scope list is computed per request: device scopes are
// dynamic, and a code, device code or refresh token keeps the scopes it had.
function grantableScopes(ctx, indicator) {
  const out = new Set();
  const { params = {}, entities = {} } = ctx.oidc || {};
  for (const s of splitScope(params.scope)) out.add(s);
  for (const kind of ['AuthorizationCode', 'DeviceCode', 'RefreshToken']) {
    for (const s of splitScope(entities[kind]?.scope)) out.add(s);
  }
  const granted = entities.Grant?.resources?.[indicator];
  for (const s of splitScope(granted)) out.add(s);
  return [...out].filter((s) => GRANTABLE.test(s)).join(' ');
}

async function getResourceServerInfo(ctx, indicator, client) {
  const ttl = client?.access_token_ttl || AT_TTL;
  const common = { scope: grantableScopes(ctx, indicator), audience: indicator, accessTokenTTL: ttl };
  if (indicator === RS_HOMESERVER) return { ...common, accessTokenFormat: 'opaque' };
  if (indicator === RS_GATEWAY || indicator === RS_ELSEWHERE) {
    return { ...common, accessTokenFormat: 'jwt', jwt: { sign: { alg: JWT_ALG } } };
  }
  throw new errors.InvalidTarget();
}

// ---------------------------------------------------------------- the provider

const configuration = {
  clients,
  jwks,
  extraClientMetadata: { properties: ['matrix_user', 'access_token_ttl'] },
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
  claims: { openid: ['sub'] },
  scopes: ['openid', 'offline_access'],
  cookies: { keys: ['e2e-cookie-key-not-secret'] },
  pkce: { required: () => true },
  // A resource server's accessTokenTTL (per client: `access_token_ttl`) wins.
  ttl: {
    AccessToken: (ctx, token, client) => token.resourceServer?.accessTokenTTL
      || client?.access_token_ttl || AT_TTL,
    ClientCredentials: (ctx, token, client) => token.resourceServer?.accessTokenTTL
      || client?.access_token_ttl || AT_TTL,
    AuthorizationCode: 60,
    DeviceCode: 600,
    IdToken: 3600,
    RefreshToken: 86400,
    Grant: 86400,
    Interaction: 600,
    Session: 86400,
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    // Tokens always land on a resource server, `openid` or not.
    userinfo: { enabled: false },
    introspection: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => INTROSPECTORS.has(client.clientId)
        || token.clientId === client.clientId,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf || RS_HOMESERVER,
      useGrantedResource: async () => true,
      getResourceServerInfo,
    },
  },
  // Refresh tokens are issued to any client allowed the grant, and always rotated.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => true,
  // Adapter 3: Synapse requires `username` in the introspection response.
  extraTokenClaims: async (ctx, token) => {
    let username = token.accountId;
    if (!username && token.clientId) {
      const client = await ctx.oidc.provider.Client.find(token.clientId);
      username = client?.matrix_user;
    }
    if (!username) return undefined;
    if (token.kind === 'AccessToken' || token.kind === 'ClientCredentials') {
      await provision(username, splitScope(token.scope));
    }
    return { username };
  },
  // Adapter 5: Synapse's metadata loader requires `account_management_uri`.
  discovery: { account_management_uri: `${ISSUER}/account` },
  // Adapter 1: Synapse POSTs to the fixed path {endpoint}/oauth2/introspect.
  routes: { introspection: '/oauth2/introspect', revocation: '/oauth2/revoke' },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
};

const provider = new Provider(ISSUER, configuration);
provider.proxy = false;

const stats = { introspection: {}, token: 0, revocation: 0, started_at: Date.now() };

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function basicClient(header) {
  const m = /^Basic (.+)$/.exec(header || '');
  if (!m) return undefined;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  return decodeURIComponent(decoded.split(':')[0]);
}

// Adapter 6: oidc-provider will not introspect JWT access tokens. For Synapse
// only, verify our own JWTs; any other caller gets oidc-provider's own answer
// (a gateway must validate JWTs locally, against /jwks).
async function introspectOwnJwt(token) {
  try {
    const { payload } = await jose.jwtVerify(token, localKeySet, {
      issuer: ISSUER,
      typ: 'at+jwt',
    });
    return {
      active: true,
      scope: payload.scope,
      username: payload.username,
      sub: payload.sub,
      client_id: payload.client_id,
      exp: payload.exp,
      iat: payload.iat,
      token_type: 'Bearer',
    };
  } catch {
    return { active: false };
  }
}

provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === '/_e2e/stats') {
    ctx.type = 'json';
    ctx.body = stats;
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/token') stats.token += 1;
  if (ctx.method === 'POST' && ctx.path === '/oauth2/revoke') stats.revocation += 1;
  if (!(ctx.method === 'POST' && ctx.path === '/oauth2/introspect')) {
    await next();
    return;
  }

  const bearer = /^Bearer (.+)$/.exec(ctx.get('authorization'));
  if (bearer) {
    const found = BEARER_CLIENTS.get(bearer[1]);
    if (found) {
      const [id, secret] = found;
      ctx.request.headers.authorization = `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;
    }
  }
  const raw = await readBody(ctx.req);
  const form = Object.fromEntries(new URLSearchParams(raw));
  ctx.request.body = form;
  const client = basicClient(ctx.get('authorization')) || form.client_id || '-';
  stats.introspection[client] = (stats.introspection[client] || 0) + 1;
  console.log(`introspection client=${client} n=${stats.introspection[client]}`);

  if (client === 'synapse' && /^[\w-]+\.[\w-]+\.[\w-]*$/.test(form.token || '')) {
    const result = await introspectOwnJwt(form.token);
    if (result.active) result.expires_in = Math.max(0, result.exp - Math.floor(Date.now() / 1000));
    ctx.type = 'json';
    ctx.body = result;
    return;
  }
  await next();
  // Adapter 7: Synapse ignores `exp` and honours only MAS's `expires_in`.
  if (client === 'synapse' && ctx.body && ctx.body.active && typeof ctx.body.exp === 'number') {
    ctx.body.expires_in = Math.max(0, ctx.body.exp - Math.floor(Date.now() / 1000));
  }
});

const server = provider.listen(PORT, HOST, () => {
  console.log(`oidc-provider listening on ${ISSUER}`);
});

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
