// Validate-as-you-type for the policy editor: a debounced POST of the draft to /console/api/validate, errors shown
// beside their line in the gutter and listed below. No framework; the server does the validating.
"use strict";
(function () {
  const area = document.getElementById("yaml");
  const gutter = document.getElementById("gutter");
  const form = document.getElementById("editor-form");
  if (!area || !gutter || !form) return;
  const list = document.getElementById("errors");
  const validity = document.getElementById("validity");
  const csrf = document.getElementById("csrf").value;
  let timer = null;
  let seq = 0;

  function drawGutter(bad) {
    const lines = area.value.split("\n").length;
    gutter.textContent = "";
    for (let n = 1; n <= lines; n++) {
      const span = document.createElement("span");
      span.className = bad.has(n) ? "ln bad" : "ln";
      if (bad.has(n)) span.title = bad.get(n); // the reason, on hovering the marked line number
      span.dataset.line = String(n);
      span.textContent = String(n);
      gutter.appendChild(span);
      gutter.appendChild(document.createTextNode("\n"));
    }
    gutter.scrollTop = area.scrollTop;
  }

  async function validate() {
    const mine = ++seq;
    let answer;
    try {
      const resp = await fetch("/console/api/validate", {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify({policy_id: form.dataset.policy, yaml: area.value}),
      });
      if (resp.status === 401) { validity.textContent = "session ended: sign in again"; return; }
      answer = await resp.json();
    } catch (err) {
      validity.textContent = "could not validate: " + err;
      return;
    }
    if (mine !== seq) return; // a newer draft is being checked
    const bad = new Map();
    for (const e of answer.errors.filter(e => e.line)) {
      bad.set(e.line, (bad.has(e.line) ? bad.get(e.line) + "\n" : "") + (e.field ? e.field + ": " : "") + e.message);
    }
    list.textContent = "";
    for (const e of answer.errors) {
      const li = document.createElement("li");
      li.className = "error";
      li.dataset.line = e.line || "";
      li.textContent = e.text; // file:line: field: reason, as a reload would log it
      list.appendChild(li);
    }
    validity.textContent = answer.valid ? "valid: would be version " + answer.version : "invalid: not saved";
    validity.className = answer.valid ? "ok" : "error";
    drawGutter(bad);
  }

  area.addEventListener("input", function () {
    drawGutter(new Map());
    clearTimeout(timer);
    timer = setTimeout(validate, 300);
  });
  area.addEventListener("scroll", function () { gutter.scrollTop = area.scrollTop; });
})();
