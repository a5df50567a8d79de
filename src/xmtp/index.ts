/** The XMTP V3 face of `converge serve`, loaded only when `--xmtp-port` is given. */
export * as XmtpServer from "./XmtpServer.ts"
export * as XmtpStore from "./XmtpStore.ts"
