// Loaded from a file, not inline, so the page's Content-Security-Policy can
// forbid inline scripts.
AsyncApiStandalone.render({
  schema: { url: "/asyncapi.yaml", options: { method: "GET" } },
  config: { show: { sidebar: true, errors: true } },
}, document.getElementById("asyncapi"));
