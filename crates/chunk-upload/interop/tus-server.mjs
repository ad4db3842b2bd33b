// Runs the reference tus server (@tus/server with @tus/file-store) on 127.0.0.1 with an
// ephemeral port, storing into the directory given as the first argument. Prints
// "listening <endpoint>" once it accepts connections; stops when stdin closes.
import { Server } from "@tus/server";
import { FileStore } from "@tus/file-store";

const directory = process.argv[2];
if (!directory) {
  console.error("usage: node tus-server.mjs <directory>");
  process.exit(2);
}

const server = new Server({ path: "/files", datastore: new FileStore({ directory }) });
const listener = server.listen({ host: "127.0.0.1", port: 0 }, () => {
  const { port } = listener.address();
  console.log(`listening http://127.0.0.1:${port}/files`);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
