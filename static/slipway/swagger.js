// Starts Swagger UI on the API docs page. drf-spectacular renders this script inline; our Content
// Security Policy allows no inline script, so it lives here and reads its settings from #swagger-ui.
// Adapted from drf-spectacular's drf_spectacular/swagger_ui.js (BSD-3-Clause), without OAuth2.
"use strict";

(() => {
  const root = document.getElementById("swagger-ui");
  const swaggerSettings = JSON.parse(root.dataset.settings);
  const schemaAuthNames = JSON.parse(root.dataset.authNames);
  const csrfHeader = root.dataset.csrfHeader;
  const csrfToken = root.dataset.csrfToken;
  let schemaAuthFailed = false;
  let ui;

  const reloadSchemaOnAuthChange = () => {
    const reload = (ori) => (...args) => {
      schemaAuthFailed = false;
      setTimeout(() => ui.specActions.download());
      return ori(...args);
    };
    return { statePlugins: { auth: { wrapActions: { authorize: reload, logout: reload } } } };
  };

  const isSchemaUrl = (url) => ui !== undefined && url === new URL(ui.getConfigs().url, document.baseURI).href;

  // A schema that needs the credentials typed into "Authorize" is fetched again with them, once.
  const responseInterceptor = (response) => {
    if (!response.ok && isSchemaUrl(response.url) && !schemaAuthFailed) {
      schemaAuthFailed = true;
      setTimeout(() => ui.specActions.download());
    }
    return response;
  };

  const injectAuthCredentials = (request) => {
    if (ui === undefined) return;
    const state = ui.getState().get("auth").get("authorized");
    const authorized = state === undefined ? {} : state.toJS();
    for (const authName of schemaAuthNames) {
      const authDef = authorized[authName];
      if (authDef && authDef.schema && authDef.schema.type === "http" && authDef.schema.scheme === "bearer") {
        request.headers.Authorization = `Bearer ${authDef.value}`;
        return;
      }
    }
  };

  const requestInterceptor = (request) => {
    if (request.loadSpec && schemaAuthNames.length > 0 && !schemaAuthFailed) injectAuthCredentials(request);
    // "Try it out" with the browser's session: Django wants the CSRF token on anything but GET.
    if (!["GET", undefined].includes(request.method) && request.credentials === "same-origin") {
      request.headers[csrfHeader] = csrfToken;
    }
    return request;
  };

  ui = SwaggerUIBundle({
    url: root.dataset.schemaUrl,
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    plugins: schemaAuthNames.length > 0 ? [reloadSchemaOnAuthChange] : [],
    layout: "BaseLayout",
    requestInterceptor,
    responseInterceptor,
    ...swaggerSettings,
  });
})();
