// The page the Cognito Hosted UI redirects back to, opened by Swagger UI as a pop-up. It hands
// the authorization code to the Swagger UI window that opened it (which then redeems the code
// with its PKCE verifier) and closes. An external file, so the page needs no inline script.
(function () {
  "use strict";

  var CODE_FLOWS = ["authorizationCode", "authorization_code", "accessCode"];

  function show(message) {
    var status = document.getElementById("oauth2-status");
    if (status) {
      status.textContent = message;
    }
  }

  function responseParameters() {
    // Errors and implicit-flow answers may come back in the fragment instead of the query.
    var fragment = window.location.hash.substring(1);
    var text = /(^|&)(code|token|access_token|error)=/.test(fragment)
      ? fragment
      : window.location.search.substring(1);
    var params = new URLSearchParams(text);
    var result = {};
    params.forEach(function (value, key) {
      result[key] = value;
    });
    return result;
  }

  function run() {
    var oauth2 = window.opener && window.opener.swaggerUIRedirectOauth2;
    if (!oauth2) {
      show("This window was not opened by Swagger UI; sign in from the API docs page.");
      return;
    }
    var answer = responseParameters();
    var stateMatches = typeof answer.state === "string" && answer.state === oauth2.state;
    var flow = oauth2.auth.schema.get("flow");

    if (CODE_FLOWS.indexOf(flow) !== -1 && !oauth2.auth.code) {
      // A code whose state is not the one Swagger UI sent may be an attacker's, injected to
      // sign the admin in as someone else: refuse it instead of only warning.
      if (answer.code && stateMatches) {
        delete oauth2.state;
        oauth2.auth.code = answer.code;
        oauth2.callback({ auth: oauth2.auth, redirectUrl: oauth2.redirectUrl });
      } else {
        var message = "[Authorization failed]: no authorization code received.";
        if (answer.error) {
          message = "[" + answer.error + "]: " + (answer.error_description || "sign-in failed.");
        } else if (answer.code) {
          message = "[Authorization failed]: the state returned by the server does not match.";
        }
        oauth2.errCb({ authId: oauth2.auth.name, source: "auth", level: "error", message: message });
      }
    } else {
      oauth2.callback({
        auth: oauth2.auth,
        token: answer,
        isValid: stateMatches,
        redirectUrl: oauth2.redirectUrl
      });
    }
    window.close();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", run);
  } else {
    run();
  }
})();
