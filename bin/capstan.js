#!/usr/bin/env node
// The published entry: the compiled CLI (built by `npm install` via `prepare`).
import { main } from "../dist/cli/main.js";

process.exit(await main(process.argv));
