// The SPA's client, generated from the committed OpenAPI document: the types, one SDK function
// per operation, and the fetch client they call. `generated/` is rebuilt on every check.
export default {
  input: "../../openapi.json",
  output: { path: "generated", format: false, lint: false },
  plugins: ["@hey-api/client-fetch", "@hey-api/typescript", "@hey-api/sdk"],
  logs: { file: false, level: "warn" },
};
