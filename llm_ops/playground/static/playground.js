// The LLM Ops playground: talks to the stack's OpenAI-compatible /v1, on the origin that served it.
"use strict";

const KEY_STORAGE = "llm-ops-api-key"; // session storage: gone when the browser tab is closed
const $ = (id) => document.getElementById(id);
let history = []; // the chat so far: {role, content}
let running = null; // the AbortController of the answer being streamed

function headers() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}

// A sentence for a person, from a refused request.
function describeError(status, message, retryAfter) {
  if (status === 401) return "The API key is missing or not valid: enter a key this stack accepts.";
  if (status === 429) return `The model is busy: try again in ${retryAfter || "a few"} seconds.`;
  if (status === 400 && /context|too long|maximum/i.test(message))
    return `The conversation is too long for the model: start a new conversation or ask for fewer tokens. (${message})`;
  if (status === 502 || status === 503)
    return "No replica of this model could answer (it may be restarting): try again in a moment.";
  return `The request failed (${status}): ${message}`;
}

// A sentence for a failed call: fetch rejects with a TypeError when it gets no answer at all.
function sentenceFor(error) {
  return error instanceof TypeError ? "The stack cannot be reached: is it running?" : error.message;
}

async function refusal(response) {
  let message = response.statusText;
  try {
    const body = await response.json();
    message = body.error?.message || body.text || message;
  } catch (_) { /* not JSON: keep the status text */ }
  return describeError(response.status, message, response.headers.get("Retry-After"));
}

function showError(sentence) {
  $("error").textContent = sentence;
  $("error").hidden = !sentence;
}

async function loadModels() {
  $("models-status").textContent = "loading models…";
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) throw new Error(await refusal(response));
    const models = (await response.json()).data;
    const chosen = $("model").value;
    $("model").replaceChildren(...models.map((m) => new Option(m.id, m.id, false, m.id === chosen)));
    $("models-status").textContent = models.length ? `${models.length} model(s) up` : "no model is up yet";
    showError("");
  } catch (error) {
    $("models-status").textContent = "";
    showError(sentenceFor(error));
  }
}

function addMessage(role, text) {
  const element = document.createElement("div");
  element.className = `message ${role}`;
  element.textContent = text;
  $("conversation").append(element);
  return element;
}

function requestBody(prompt) {
  const body = {
    model: $("model").value,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Number($("max-tokens").value),
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("mode").value === "completion") return { ...body, prompt, echo: $("echo").checked };
  const system = $("system").value.trim() ? [{ role: "system", content: $("system").value.trim() }] : [];
  return { ...body, messages: [...system, ...history, { role: "user", content: prompt }] };
}

// Server-sent events from a fetch body: calls onEvent with each `data:` payload until [DONE].
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, end).split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") return;
      if (data) onEvent(JSON.parse(data));
    }
  }
}

async function send(event) {
  event.preventDefault();
  const prompt = $("prompt").value;
  const chat = $("mode").value === "chat";
  const body = requestBody(prompt);
  addMessage("user", prompt);
  const answer = addMessage("assistant", "…");
  const stats = document.createElement("span");
  stats.className = "stats";
  let text = "", firstTokenAt = null, finish = null, tokens = null, requestId = null;
  const started = performance.now();
  running = new AbortController();
  setRunning(true);
  showError("");
  try {
    const response = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: running.signal,
    });
    requestId = response.headers.get("X-Request-Id");
    if (!response.ok) throw new Error(await refusal(response));
    $("prompt").value = "";
    await readEvents(response, (data) => {
      if (data.error) throw new Error(describeError(data.error.code || 500, data.error.message));
      const choice = data.choices?.[0];
      const piece = chat ? choice?.delta?.content : choice?.text;
      if (piece) {
        firstTokenAt ??= performance.now();
        text += piece;
        answer.textContent = text;
      }
      finish = choice?.finish_reason || finish;
      if (data.usage) tokens = data.usage.completion_tokens;
    });
    if (chat) history.push({ role: "user", content: prompt }, { role: "assistant", content: text });
  } catch (error) {
    if (error.name === "AbortError") finish = "stopped";
    else showError(sentenceFor(error));
    answer.textContent = text || "(no answer)";
  } finally {
    running = null;
    setRunning(false);
  }
  const seconds = firstTokenAt ? (performance.now() - firstTokenAt) / 1000 : 0;
  const parts = [];
  if (firstTokenAt) parts.push(`time to first token ${Math.round(firstTokenAt - started)} ms`);
  if (tokens && seconds > 0) parts.push(`${(tokens / seconds).toFixed(1)} tokens/s`);
  parts.push(`finish: ${finish || "none"}`);
  if (requestId) parts.push(`request ${requestId}`);
  stats.textContent = parts.join(" · ");
  answer.append(stats);
}

function setRunning(isRunning) {
  $("send").disabled = isRunning;
  $("stop").disabled = !isRunning;
}

function showMode() {
  const chat = $("mode").value === "chat";
  $("system-label").hidden = !chat;
  $("echo-label").hidden = chat;
}

$("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  loadModels();
});
$("mode").addEventListener("change", showMode);
$("ask").addEventListener("submit", send);
$("stop").addEventListener("click", () => running?.abort());
$("clear").addEventListener("click", () => { history = []; $("conversation").replaceChildren(); showError(""); });
showMode();
loadModels();
