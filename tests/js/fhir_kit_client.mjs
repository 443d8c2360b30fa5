// fhir-kit-client (npm) against the real server: node fhir_kit_client.mjs <client module> <base url> <token> <mrn system>
// Exits non-zero at the first failed check; prints one JSON line of what it did.
import assert from 'node:assert/strict';
import { pathToFileURL } from 'node:url';

const [modulePath, baseUrl, bearerToken, mrnSystem] = process.argv.slice(2);
const { Client } = await import(pathToFileURL(modulePath).href);
const client = new Client({ baseUrl, bearerToken });
const done = [];
const mrn = `fkc-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;

const statement = await client.capabilityStatement();
assert.equal(statement.resourceType, 'CapabilityStatement');
assert.equal(statement.fhirVersion, '4.0.1');
done.push('capabilityStatement');

const patient = await client.create({ resourceType: 'Patient', body: {
  resourceType: 'Patient', identifier: [{ system: mrnSystem, value: mrn }], gender: 'female', birthDate: '1959-09-09' } });
assert.equal(patient.meta.versionId, '1');
const read = await client.read({ resourceType: 'Patient', id: patient.id });
assert.equal(read.identifier[0].value, mrn);
const updated = await client.update({ resourceType: 'Patient', id: patient.id, body: { ...read, gender: 'male' } });
assert.equal(updated.meta.versionId, '2');
assert.equal(updated.gender, 'male');
done.push('create', 'read', 'update');

const lab = (day) => ({ resourceType: 'Observation', status: 'final',
  code: { coding: [{ system: 'http://loinc.org', code: '718-7' }] }, subject: { reference: 'urn:uuid:00000000-0000-4000-8000-000000000001' },
  effectiveDateTime: `2026-03-${String(day).padStart(2, '0')}`,
  valueQuantity: { value: 12 + day / 10, unit: 'g/dL', system: 'http://unitsofmeasure.org', code: 'g/dL' } });
const entries = [1, 2, 3, 4, 5].map((day) => ({ resource: { ...lab(day), subject: { reference: `Patient/${patient.id}` } },
  request: { method: 'POST', url: 'Observation' } }));
const reply = await client.transaction({ body: { resourceType: 'Bundle', type: 'transaction', entry: entries } });
assert.equal(reply.type, 'transaction-response');
assert.deepEqual(reply.entry.map((e) => e.response.status), Array(5).fill('201 Created'));
done.push('transaction');

let page = await client.search({ resourceType: 'Observation', searchParams: { subject: `Patient/${patient.id}`, _count: 2, _sort: 'date' } });
const seen = [];
for (;;) {
  assert.equal(page.total, 5);
  seen.push(...page.entry.filter((e) => e.search.mode === 'match').map((e) => e.resource.effectiveDateTime));
  const next = await client.nextPage({ bundle: page });
  if (!next) break;
  page = next;
}
assert.deepEqual(seen, ['2026-03-01', '2026-03-02', '2026-03-03', '2026-03-04', '2026-03-05']);
const counted = await client.search({ resourceType: 'Observation', searchParams: { subject: `Patient/${patient.id}`, _count: 0 } });
assert.equal(counted.total, 5);
assert.equal(await client.nextPage({ bundle: counted }), undefined);
done.push('search', 'nextPage');

const patched = await client.patch({ resourceType: 'Patient', id: patient.id,
  jsonPatch: [{ op: 'replace', path: '/gender', value: 'other' }], options: { headers: { 'If-Match': 'W/"2"' } } });
assert.equal(patched.gender, 'other');
assert.equal(patched.meta.versionId, '3');
done.push('patch');

const history = await client.history({ resourceType: 'Patient', id: patient.id });
assert.equal(history.type, 'history');
assert.deepEqual(history.entry.map((e) => e.resource.meta.versionId), ['3', '2', '1']);
const typed = await client.typeHistory({ resourceType: 'Observation', options: { headers: {} } });
assert.equal(typed.type, 'history');
assert.ok(typed.entry.length >= 5);
const system = await client.systemHistory();
assert.equal(system.type, 'history');
done.push('history', 'typeHistory', 'systemHistory');

await client.delete({ resourceType: 'Patient', id: patient.id });
await assert.rejects(client.read({ resourceType: 'Patient', id: patient.id }), (error) => error.response?.status === 410);
done.push('delete');
console.log(JSON.stringify({ done }));
