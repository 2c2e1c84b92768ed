/* Yijian Hub web workstation: small shared behaviour (no framework; htmx does the requests).
 *
 * - htmx requests carry the CSRF token from <body hx-headers> (set in base.html);
 * - a form with data-confirm asks before it is sent;
 * - an htmx error answer (4xx/5xx) is shown instead of being swallowed silently.
 */
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  }, true);

  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail && event.detail.xhr;
    if (!xhr) return;
    var target = event.detail.target;
    if (target && xhr.responseText && /<html/i.test(xhr.responseText)) {
      var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
      var message = doc.querySelector(".error-message");
      var box = document.createElement("p");
      box.className = "alert alert-error";
      box.setAttribute("role", "alert");
      box.textContent = message ? message.textContent : xhr.status + " " + xhr.statusText;
      target.prepend(box);
    }
  });

  /** The CSRF token of the page, for scripts that post with fetch(). */
  window.yijianCsrfToken = function () {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || "";
    } catch (e) {
      return "";
    }
  };
})();
