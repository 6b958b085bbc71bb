// The admin playground (templates/admin/gateway/playground.html): posts the conversation to the staff-only
// relay, which calls the portal's own /v1/chat/completions, and shows the answer as it streams in.
"use strict";

(function () {
  const form = document.getElementById("pg-form");
  if (!form) { return; }
  const $ = (id) => document.getElementById(id);
  const chat = $("pg-chat");
  const history = [];
  let controller = null;

  function usd(text) {
    if (text === null || text === undefined) { return "no price known"; }
    const value = Number(text);
    if (value === 0) { return "$0.00"; }
    // As the `usd` template filter does (tracking/templatetags/spend.py).
    if (value >= 1) { return "$" + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }); }
    if (value >= 0.01) { return "$" + value.toFixed(4); }
    const places = Math.min(-Math.floor(Math.log10(value)) + 3, 10);
    return "$" + value.toFixed(places).replace(/0+$/, "");
  }

  function bubble(who, text, cls) {
    const div = document.createElement("div");
    div.className = "pg-msg" + (cls ? " " + cls : "");
    const label = document.createElement("span");
    label.className = "who";
    label.textContent = who;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    div.append(label, body);
    chat.append(div);
    chat.scrollTop = chat.scrollHeight;
    return body;
  }

  function setFact(id, text) { $(id).textContent = text; }

  function resetFacts() {
    for (const id of ["pg-status", "pg-deployment", "pg-ttft", "pg-total", "pg-tokens", "pg-cost", "pg-request"]) {
      setFact(id, "…");
    }
    setFact("pg-ratelimit", "–");
  }

  function onMeta(meta) {
    setFact("pg-status", String(meta.status) + (meta.retry_after ? " (retry after " + meta.retry_after + " s)" : ""));
    setFact("pg-request", meta.request_id || "–");
    const lines = Object.entries(meta.ratelimit || {}).map(([k, v]) => k + ": " + v);
    setFact("pg-ratelimit", lines.length ? lines.join("\n") : "none (no limit applies)");
  }

  function onSummary(summary, answer) {
    setFact("pg-ttft", summary.ttft_ms === null ? "–" : summary.ttft_ms.toFixed(0) + " ms");
    setFact("pg-total", summary.total_ms.toFixed(0) + " ms");
    const record = summary.record;
    const usage = summary.usage || {};
    const prompt = record && record.prompt_tokens !== null ? record.prompt_tokens : usage.prompt_tokens;
    const completion = record && record.completion_tokens !== null ? record.completion_tokens : usage.completion_tokens;
    setFact("pg-tokens", prompt === undefined ? "–" : prompt + " / " + completion);
    if (!record) {
      setFact("pg-deployment", "(usage record not written yet)");
      setFact("pg-cost", "–");
      return;
    }
    const served = $("pg-deployment");
    served.textContent = "";
    if (record.deployment_url) {
      const link = document.createElement("a");
      link.href = record.deployment_url;
      link.textContent = record.deployment;
      served.append(link);
    } else {
      served.textContent = record.provider ? record.provider + "/" + record.upstream_model : "–";
    }
    if (record.attempts > 1) { served.append(" (after " + record.attempts + " attempts)"); }
    let cost = usd(record.cost_usd);
    if (Number(record.cost_usd) === 0 && record.list_cost_usd !== null && Number(record.list_cost_usd) > 0) {
      cost += " (free tier; list price " + usd(record.list_cost_usd) + ")";
    }
    setFact("pg-cost", cost);
    const request = $("pg-request");
    const link = document.createElement("a");
    link.href = record.record_url;
    link.textContent = request.textContent;
    request.textContent = "";
    request.append(link);
    if (answer.textContent) { history.push({ role: "assistant", content: answer.textContent }); }
  }

  function onChunk(data, answer) {
    let chunk;
    try { chunk = JSON.parse(data); } catch (e) { return; }
    if (chunk.error) {
      answer.parentElement.classList.add("error");
      answer.textContent += (answer.textContent ? "\n" : "") + "Error: " + chunk.error.message;
      return;
    }
    for (const choice of chunk.choices || []) {
      const delta = choice.delta || {};
      if (delta.content) { answer.textContent += delta.content; }
    }
    chat.scrollTop = chat.scrollHeight;
  }

  function dispatch(block, answer) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) { name = line.slice(6).trim(); }
      else if (line.startsWith("data:")) { data.push(line.slice(5).trim()); }
    }
    const text = data.join("\n");
    if (!text) { return; }
    if (name === "meta") { onMeta(JSON.parse(text)); }
    else if (name === "failure") {
      const failure = JSON.parse(text);
      if (failure.code === "playground_unreachable") { setFact("pg-status", String(failure.status)); }
      answer.parentElement.classList.add("error");
      answer.textContent = "Error " + failure.status + (failure.code ? " (" + failure.code + ")" : "") + ": " + failure.message;
    }
    else if (name === "summary") { onSummary(JSON.parse(text), answer); }
    else if (text !== "[DONE]") { onChunk(text, answer); }
  }

  async function send(event) {
    event.preventDefault();
    const prompt = $("pg-prompt").value;
    if (!prompt.trim() || controller) { return; }
    history.push({ role: "user", content: prompt });
    bubble("you", prompt);
    $("pg-prompt").value = "";
    const answer = bubble($("pg-model").value, "");
    resetFacts();
    controller = new AbortController();
    $("pg-send").disabled = true;
    $("pg-stop").disabled = false;
    const body = {
      model: $("pg-model").value,
      system: $("pg-system").value,
      temperature: $("pg-temperature").value,
      max_tokens: $("pg-max-tokens").value,
      messages: history,
    };
    try {
      const response = await fetch(form.dataset.chatUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json",
                   "X-CSRFToken": form.querySelector("[name=csrfmiddlewaretoken]").value },
        body: JSON.stringify(body),
        signal: controller.signal,
        credentials: "same-origin",
      });
      if (!response.ok) {
        let message = "HTTP " + response.status;
        try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
        throw new Error(message);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { break; }
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          dispatch(buffer.slice(0, cut), answer);
          buffer = buffer.slice(cut + 2);
        }
      }
      if (buffer.trim()) { dispatch(buffer, answer); }
    } catch (error) {
      answer.parentElement.classList.add("error");
      answer.textContent += (answer.textContent ? "\n" : "") + (error.name === "AbortError" ? "(stopped)" : "Error: " + error.message);
    } finally {
      controller = null;
      $("pg-send").disabled = false;
      $("pg-stop").disabled = true;
      $("pg-prompt").focus();
    }
  }

  form.addEventListener("submit", send);
  $("pg-stop").addEventListener("click", () => { if (controller) { controller.abort(); } });
  $("pg-clear").addEventListener("click", () => { history.length = 0; chat.textContent = ""; resetFacts(); });
  $("pg-prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { form.requestSubmit(); }
  });
})();
