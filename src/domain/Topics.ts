/**
 * Topic names: the delivery service's ordered topics, and the engine's cursor on each.
 * `g/<group id>` for a group, `w/<installation id>` for an installation's welcomes. A store
 * treats a name as opaque.
 */
export type Topic = string & { readonly _Topic: unique symbol }

export const groupTopic = (groupId: string): Topic => `g/${groupId}` as Topic
/** The group a topic name is of (`groupTopic`'s inverse), if it is a group's. */
export const groupOfTopic = (topic: string): string | undefined => (topic.startsWith("g/") ? topic.slice(2) : undefined)
export const welcomeTopic = (installationId: string): Topic => `w/${installationId}` as Topic
