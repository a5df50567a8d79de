/**
 * The one part of `ws` (a dependency that ships no types) the RPC client constructs: a client
 * WebSocket with a bound on each message it takes.
 */
declare module "ws" {
  export class WebSocket {
    constructor(
      address: string,
      protocols: string | Array<string> | undefined,
      options: { readonly maxPayload: number }
    )
  }
}
