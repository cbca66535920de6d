// The upload form's drop zone and progress bar, "Copy" buttons, and the deploy form's plan examples.
document.addEventListener("DOMContentLoaded", () => {
  // Delegated: htmx swaps in new buttons (the live deployment panel) long after this ran.
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const source = document.querySelector(button.dataset.copy);
    try {
      await navigator.clipboard.writeText(source.textContent.trim());
      button.textContent = "Copied";
    } catch {
      // No clipboard (an insecure origin): select the text so Ctrl-C works.
      window.getSelection().selectAllChildren(source);
      button.textContent = "Selected: press Ctrl-C";
    }
  });

  // Choosing a strategy offers its example plan, unless the person already wrote their own.
  document.addEventListener("change", (event) => {
    const select = event.target.closest("select[data-plan-examples]");
    if (!select) return;
    const plan = document.querySelector(select.dataset.planExamples);
    const examples = Array.from(select.options, (option) => option.dataset.example || "");
    if (plan.value.trim() && !examples.includes(plan.value)) return;
    plan.value = select.selectedOptions[0].dataset.example || "";
    if (plan.value) plan.closest("details")?.setAttribute("open", "");
  });

  const form = document.getElementById("upload-form");
  if (!form) return;
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("artifact-input");
  const text = document.getElementById("dropzone-text");
  const progress = document.getElementById("upload-progress");
  const percent = document.getElementById("upload-percent");
  const idle = text.textContent;

  const size = (bytes) => {
    const units = ["bytes", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i += 1; }
    return `${i ? bytes.toFixed(1) : bytes} ${units[i]}`;
  };
  const show = () => {
    const file = input.files[0];
    zone.classList.toggle("chosen", Boolean(file));
    text.textContent = file ? `${file.name} (${size(file.size)})` : idle;
  };
  const setProgress = (value) => {
    progress.value = value;
    percent.textContent = `${Math.round(value)}%`;
  };

  input.addEventListener("change", show);
  show(); // a file chosen while the page was still loading, before this ran
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("dragover");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("dragover")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      show();
    }
  });

  form.addEventListener("htmx:beforeRequest", () => { progress.hidden = false; setProgress(0); });
  form.addEventListener("htmx:xhr:progress", (event) => {
    if (event.detail.lengthComputable) setProgress((event.detail.loaded / event.detail.total) * 100);
  });
  form.addEventListener("htmx:afterRequest", (event) => {
    setProgress(100);
    if (event.detail.successful) {
      form.reset();
      show();
    }
  });
});
