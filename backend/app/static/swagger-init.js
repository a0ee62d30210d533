// Starts Swagger UI for the /docs page. It lives in its own file, with its settings in the
// page's data-config attribute, so the page carries no inline script and the
// Content-Security-Policy can forbid inline code altogether.
(function () {
  "use strict";

  var mount = document.getElementById("swagger-ui");
  var config = JSON.parse(mount.getAttribute("data-config"));

  var ui = SwaggerUIBundle({
    url: config.openapiUrl,
    domNode: mount,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    displayRequestDuration: true,
    // Admins sign in once per browser rather than on every reload.
    persistAuthorization: true,
    // The public validator lives on another host, which the CSP (rightly) refuses to reach.
    validatorUrl: null,
    // A ?url= in the address bar must not make the page load someone else's API description.
    queryConfigEnabled: false,
    // The Hosted UI compares redirect_uri with its allow-list character for character, so it
    // must be absolute; the address bar knows the public scheme and host behind the proxies.
    oauth2RedirectUrl: new URL(config.oauth2RedirectUrl, window.location.href).href
  });

  if (config.initOAuth) {
    ui.initOAuth(config.initOAuth);
  }
  window.ui = ui;
})();
