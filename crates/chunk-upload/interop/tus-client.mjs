// Uploads a file with tus-js-client. Usage:
//   node tus-client.mjs <endpoint> <file> <chunk-size> [plain|abort-resume]
// "abort-resume" aborts the upload once half of it is acknowledged, then resumes it from
// its URL with a second Upload object, as an application does after a restart.
// Prints "url <upload-url>", and "resumed-at <offset>" when resumed or "elapsed-ms <ms>"
// (upload time, file reading excluded) when not.
import { readFileSync } from "node:fs";
import * as tus from "tus-js-client";

const [endpoint, file, chunkText, mode = "plain"] = process.argv.slice(2);
const data = readFileSync(file);
const chunkSize = Number(chunkText);

function start(options) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(data, {
      endpoint,
      chunkSize,
      retryDelays: [0, 50, 100, 200, 400, 800],
      metadata: { filename: "interop.bin" },
      ...options,
      onError: reject,
      onSuccess: () => resolve({ upload, aborted: false }),
      onProgress: (sent, total) => options.onProgressHook?.(upload, sent, total, resolve),
    });
    upload.start();
  });
}

if (mode === "abort-resume") {
  const first = await start({
    onProgressHook: (upload, sent, total, resolve) => {
      if (sent >= total / 2 && upload.url) {
        upload.abort().then(() => resolve({ upload, aborted: true }));
      }
    },
  });
  if (!first.aborted) {
    console.error("the upload finished before it could be aborted");
    process.exit(1);
  }
  const url = first.upload.url;
  const head = await fetch(url, { method: "HEAD", headers: { "Tus-Resumable": "1.0.0" } });
  console.log(`resumed-at ${head.headers.get("upload-offset")}`);
  const second = await start({ uploadUrl: url });
  console.log(`url ${second.upload.url}`);
} else {
  const began = performance.now();
  const done = await start({});
  console.log(`elapsed-ms ${Math.round(performance.now() - began)}`);
  console.log(`url ${done.upload.url}`);
}
