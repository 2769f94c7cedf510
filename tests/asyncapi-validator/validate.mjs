// Validates AsyncAPI documents with the official parser (its full rule set, external $refs
// resolved relative to each file). Prints one line per finding; exits 1 on any error or warning.
//   node validate.mjs FILE...
import { Parser, fromFile } from '@asyncapi/parser';

const SEVERITY = ['error', 'warning', 'info', 'hint'];
const parser = new Parser();
let failed = false;
for (const file of process.argv.slice(2)) {
  const { document, diagnostics } = await fromFile(parser, file).parse();
  for (const d of diagnostics) {
    const where = (d.path || []).join('.');
    console.log(`${file}: ${SEVERITY[d.severity]} ${d.code}: ${d.message}${where ? ` (at ${where})` : ''}`);
    if (d.severity <= 1) failed = true;
  }
  if (document === undefined) failed = true;
  else console.log(`${file}: AsyncAPI ${document.version()}, ${document.channels().length} channels, ${document.messages().length} messages`);
}
process.exit(failed ? 1 : 0);
