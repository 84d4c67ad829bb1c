/* Runs synchronously in <head>, before the first paint: applies the stored theme so a dark-mode
   user never sees a flash of the light page, and points the highlight.js stylesheets at it.
   Also the last line of defence against a blank page: if the app module never reports that it
   started (a failed download, an old browser), a readable message is shown instead. */
(function () {
  "use strict";
  var KEY = "omniphi.theme";

  function apply(theme) {
    if (theme !== "light" && theme !== "dark") theme = "system";
    var root = document.documentElement;
    if (theme === "system") root.removeAttribute("data-theme");
    else root.setAttribute("data-theme", theme);
    var light = document.getElementById("hljs-light");
    var dark = document.getElementById("hljs-dark");
    if (light && dark) {
      light.media = theme === "system" ? "(prefers-color-scheme: light)" : theme === "light" ? "all" : "not all";
      dark.media = theme === "system" ? "(prefers-color-scheme: dark)" : theme === "dark" ? "all" : "not all";
    }
    return theme;
  }

  var stored = "system";
  try { stored = localStorage.getItem(KEY) || "system"; } catch (e) { /* storage disabled */ }
  apply(stored);

  window.omniphiTheme = {
    apply: apply,
    get: function () { try { return localStorage.getItem(KEY) || "system"; } catch (e) { return "system"; } },
    set: function (theme) {
      theme = apply(theme);
      try { localStorage.setItem(KEY, theme); } catch (e) { /* ignore */ }
      return theme;
    },
    isDark: function () {
      var t = document.documentElement.getAttribute("data-theme");
      if (t) return t === "dark";
      return !!(window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches);
    }
  };

  window.addEventListener("load", function () {
    setTimeout(function () {
      if (window.omniphiReady) return;
      var el = document.getElementById("boot-error");
      if (el) el.hidden = false;
    }, 1500);
  });
})();
