package events

type RolloutEventRecord struct {
	Id        string              `json:"id" binding:"required"`
	RolloutId string              `json:"rollout_id" binding:"required"`
	OrgId     string              `json:"org_id" binding:"required"`
	FleetId   string              `json:"fleet_id" binding:"required"`
	Event     *RolloutEventType   `json:"event" binding:"required"`
	State     *AnonymousSchema_71 `json:"state" binding:"required"`
	Group     int                 `json:"group,omitempty"`
	Reason    string              `json:"reason,omitempty"`
	Actor     string              `json:"actor,omitempty"`
	At        string              `json:"at" binding:"required"`
}
