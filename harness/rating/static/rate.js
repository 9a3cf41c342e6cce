// The rating page: talks JSON to the harness rating server; every answer is stored as soon as it is given.
// All text from the server is set with textContent (never innerHTML), so no rater id or LoRA name can inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const PAIRWISE_LABELS = { left: "A", tie: "Tie", right: "B", skip: "Can't tell" };
const PAIRWISE_KEYS = { a: "left", arrowleft: "left", b: "right", arrowright: "right", t: "tie", arrowdown: "tie",
                        s: "skip" };
let study = null;
let state = null;
let rater = null;
let busy = false;
let mark = performance.now();  // when the current question became current: the time taken is measured from here

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (error) { data = null; }
  if (!response.ok) {
    throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function storageKey() { return `harness-rater:${study.name}`; }

function answerLabel(answer) {
  return study.rubric === "pairwise" ? PAIRWISE_LABELS[answer] : (answer === "skip" ? "Can't tell" : answer);
}

function answerKey(answer) {
  if (study.rubric === "pairwise") {
    return { left: "a", right: "b", tie: "t", skip: "s" }[answer];
  }
  return answer === "10" ? "x" : (answer === "skip" ? "s" : answer);
}

function currentCriterion() {
  if (!state || !state.item) return null;
  const open = study.criteria.find((c) => !(c.id in state.item.answers));
  return open ? open.id : null;
}

function showLogin() {
  $("login").hidden = false;
  $("rating").hidden = true;
  $("who").hidden = true;
  $("rater-input").focus();
}

function render() {
  showError("");
  $("login").hidden = true;
  $("rating").hidden = false;
  $("who").hidden = false;
  $("rater-name").textContent = rater;
  const progress = $("progress");
  progress.max = Math.max(1, state.total_questions);
  progress.value = state.answered_questions;
  $("progress-text").textContent = `${state.done} of ${state.total} items done`;
  $("finished").hidden = !state.finished;
  $("task").hidden = state.finished;
  if (state.finished) return;
  const item = state.item;
  $("image-left").src = item.left;
  const pairwise = item.right !== null;
  $("right-figure").hidden = !pairwise;
  $("caption-left").textContent = pairwise ? "A" : "";
  if (pairwise) $("image-right").src = item.right;
  $("prompt").textContent = item.prompt;
  const list = $("elements");
  list.replaceChildren();
  for (const element of item.elements) {
    const li = document.createElement("li");
    const category = document.createElement("span");
    category.className = "category";
    category.textContent = element.category + " ";
    const name = document.createElement("b");
    name.textContent = element.name;
    const trigger = document.createElement("div");
    trigger.className = "trigger";
    trigger.textContent = element.trigger.join(", ");
    li.append(category, name, trigger);
    list.append(li);
  }
  const current = currentCriterion();
  const questions = $("questions");
  questions.replaceChildren();
  for (const criterion of study.criteria) {
    const box = document.createElement("div");
    box.className = "question";
    box.dataset.criterion = criterion.id;
    const given = item.answers[criterion.id];
    if (criterion.id === current) box.classList.add("current");
    if (given !== undefined) box.classList.add("answered");
    const text = document.createElement("p");
    text.textContent = criterion.question;
    box.append(text);
    for (const answer of study.answers) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.answer = answer;
      button.textContent = answerLabel(answer);
      button.title = `key: ${answerKey(answer)}`;
      if (given === answer) button.classList.add("chosen");
      button.disabled = criterion.id !== current;
      button.addEventListener("click", () => give(criterion.id, answer));
      box.append(button);
    }
    questions.append(box);
  }
  mark = performance.now();
}

async function run(call) {
  if (busy) return;
  busy = true;
  try {
    state = await call();
    render();
  } catch (error) {
    showError(error.message);
    try { state = await api("/api/state", { rater }); render(); showError(error.message); } catch (ignored) { /* keep the message */ }
  } finally {
    busy = false;
  }
}

function give(criterion, answer) {
  const seconds = Math.round(performance.now() - mark) / 1000;
  return run(() => api("/api/answer", { rater, position: state.item.position, criterion, answer, seconds }));
}

function undo() { return run(() => api("/api/undo", { rater })); }

async function login(event) {
  event.preventDefault();
  const id = $("rater-input").value.trim();
  try {
    state = await api("/api/state", { rater: id });
  } catch (error) {
    showError(error.message);
    return;
  }
  rater = id;
  localStorage.setItem(storageKey(), rater);
  render();
}

function onKey(event) {
  if (!rater || $("rating").hidden || event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey || event.altKey) {
    return;
  }
  const key = event.key.toLowerCase();
  if (key === "u" || key === "backspace") {
    event.preventDefault();
    undo();
    return;
  }
  const criterion = currentCriterion();
  if (!criterion) return;
  let answer = null;
  if (study.rubric === "pairwise") {
    answer = PAIRWISE_KEYS[key] || null;
  } else if (/^[0-9]$/.test(key)) {
    answer = key;
  } else if (key === "x") {
    answer = "10";
  } else if (key === "s") {
    answer = "skip";
  }
  if (answer !== null) {
    event.preventDefault();
    give(criterion, answer);
  }
}

async function start() {
  $("login").addEventListener("submit", login);
  $("undo").addEventListener("click", undo);
  $("undo-finished").addEventListener("click", undo);
  $("switch-rater").addEventListener("click", () => {
    localStorage.removeItem(storageKey());
    rater = null;
    state = null;
    showLogin();
  });
  document.addEventListener("keydown", onKey);
  try {
    study = await api("/api/study");
  } catch (error) {
    showError(`cannot load the study: ${error.message}`);
    return;
  }
  $("study-name").textContent = `${study.name} (${study.rubric})`;
  document.title = `Rating: ${study.name}`;
  $("keys").textContent = study.rubric === "pairwise"
    ? "Keys: a or \u2190 = A, b or \u2192 = B, t or \u2193 = tie, s = can't tell, u or Backspace = undo."
    : "Keys: 0-9 = that score, x = 10, s = can't tell, u or Backspace = undo.";
  const saved = localStorage.getItem(storageKey());
  if (saved) {
    rater = saved;
    await run(() => api("/api/state", { rater }));
    if (!state) showLogin();
  } else {
    showLogin();
  }
  document.body.dataset.ready = "true";
}

start();
