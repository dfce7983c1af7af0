// A real OpenID Connect issuer for the tests (panva's oidc-provider): node provider.mjs CONFIG.json
//
// CONFIG: {"issuer", "port", "jwks": {"keys": [private JWKs]}, "clients": [{"client_id",
// "client_secret", "alg", "ttl", "scope"}]}. Each client gets access tokens for the client credentials
// grant, as JWTs signed with its `alg` (so with the key of that type in `jwks`), for the resource it
// asks for (RFC 8707 `resource`; the first of "resources" by default), which becomes their `aud`.
// Prints "listening <url>" once it answers; a key rotation is a restart with another CONFIG.
import { readFileSync } from 'node:fs';

import { Provider } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const byClient = new Map(config.clients.map((client) => [client.client_id, client]));

const provider = new Provider(config.issuer, {
  jwks: config.jwks,
  clients: config.clients.map((client) => ({
    client_id: client.client_id,
    client_secret: client.client_secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
    scope: client.scope,
  })),
  ttl: { ClientCredentials: (ctx, token, client) => byClient.get(client.clientId).ttl },
  scopes: [...new Set(config.clients.flatMap((client) => client.scope.split(' ')))],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.resources[0],
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => {
        const wanted = byClient.get(client.clientId);
        return {
          scope: wanted.scope,
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: wanted.ttl,
          jwt: { sign: { alg: wanted.alg } },
        };
      },
    },
  },
  enabledJWA: {
    idTokenSigningAlgValues: ['RS256', 'PS256', 'ES256'],
  },
});

provider.listen(config.port, '127.0.0.1', () => {
  console.log(`listening ${config.issuer}`);
});
