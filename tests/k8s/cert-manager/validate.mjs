// Validates cert-manager's and trust-manager's objects against their CRD schemas, as compiled
// by kubernetes-models (@kubernetes-models/cert-manager, pinned in package-lock.json; install
// with `npm ci` here, as scripts/test.sh does).
//
//   node tests/k8s/cert-manager/validate.mjs OBJECTS.json
//
// OBJECTS.json: a JSON array of Kubernetes objects. Objects of other API groups are skipped
// (kubernetes-validate checks those); a kind of these groups with no schema here fails. The
// schemas check types, enums, formats and required fields; like the CRDs they come from, they do
// not refuse unknown fields (the API server's strict field validation does).
import { readFileSync } from 'node:fs';
import { Certificate } from '@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate';
import { ClusterIssuer } from '@kubernetes-models/cert-manager/cert-manager.io/v1/ClusterIssuer';
import { Issuer } from '@kubernetes-models/cert-manager/cert-manager.io/v1/Issuer';
import { Bundle } from '@kubernetes-models/cert-manager/trust.cert-manager.io/v1alpha1/Bundle';

const MODELS = {
  'cert-manager.io/v1': { Certificate, ClusterIssuer, Issuer },
  'trust.cert-manager.io/v1alpha1': { Bundle },
};
const GROUPS = ['cert-manager.io', 'trust.cert-manager.io'];

const objects = JSON.parse(readFileSync(process.argv[2], 'utf8'));
let valid = 0;
const failures = [];
for (const o of objects) {
  const group = String(o.apiVersion || '').split('/').slice(0, -1).join('/');
  if (!GROUPS.includes(group)) continue;
  const name = `${o.kind} ${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''} (${o.apiVersion})`;
  const Model = MODELS[o.apiVersion]?.[o.kind];
  if (!Model) {
    failures.push(`${name}: no schema for this kind and version`);
    continue;
  }
  try {
    new Model(o).validate();
    valid++;
  } catch (e) {
    failures.push(`${name}: ${e.message}`);
  }
}
for (const f of failures) console.error(f);
console.log(`${valid} cert-manager and trust-manager object(s) valid, ${failures.length} invalid`);
process.exit(failures.length ? 1 : 0);
