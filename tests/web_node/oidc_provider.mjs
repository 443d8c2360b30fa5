// A real OpenID Connect provider (the certified npm `oidc-provider`) for the web sign-in tests.
// Usage: node oidc_provider.mjs PORT CONFIG_JSON  (CONFIG_JSON: {client_id, client_secret, redirect_uri, accounts})
// Its bundled development login page accepts any login: the login names an account of CONFIG_JSON.accounts,
// whose claims (roles, sites) the ID token and userinfo carry.
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const config = JSON.parse(process.argv[3]);
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: config.client_id, client_secret: config.client_secret, redirect_uris: [config.redirect_uri],
    grant_types: ['authorization_code'], response_types: ['code'], token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { methods: ['S256'], required: () => true },
  scopes: ['openid', 'profile', 'roles', 'sites'],
  claims: { openid: ['sub'], profile: ['name'], roles: ['roles'], sites: ['sites'] },
  conformIdTokenClaims: false,
  cookies: { keys: ['ecrf-test-only-cookie-key'] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const account = config.accounts[id] || {};
    return { accountId: id, async claims() { return { sub: id, name: id, ...account }; } };
  },
});
provider.listen(port, '127.0.0.1', () => { console.log(`listening ${port}`); });
